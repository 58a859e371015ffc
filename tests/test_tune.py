"""`csdrafting tune`: the speed model, the search, calibration and the config it writes.

The model is checked where the answer is known in closed form (the paper's EWIF formulas with constant
costs), against the real engine run on synthetic models whose acceptance is known (with non-constant
costs), and on its failure modes (a broken variant must be caught).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from csdrafting.cascade.config import CascadeConfig
from csdrafting.cascade.engine import Cascade
from csdrafting.drafters.maxgram import MaxGram
from csdrafting.protocol import ModelInfo
from csdrafting.tune import cli as tune_cli
from csdrafting.tune import pipeline, validate
from csdrafting.tune.acceptance_stats import _runs_neural, _runs_proposals, profile_from_runs
from csdrafting.tune.costs import fit_prefill, measure_cost_curve
from csdrafting.tune.replay import replay
from csdrafting.tune.search import SearchSpace, search
from csdrafting.tune.speed import (
    CascadeModel, Config, CostCurve, Measurements, Profile, best_speculative_k, ewif_horizontal, ewif_speculative,
    ewif_vertical, predict,
)
from csdrafting.tune.tuner import calibrate, to_spec, tune

MAXGRAM = "maxgram"  # the registered Max-Gram drafter, by its name as configs and the tuner spell it

C = CostCurve.constant
P = Profile.constant


def meas_const(alphas: dict, costs: dict) -> Measurements:
    return Measurements("T", {k: C(v) for k, v in costs.items()}, {k: P(v) for k, v in alphas.items()})


# ------------------------------------------------------------------------------------------------ formulas


@pytest.mark.parametrize("alpha,c", [(0.5, 0.05), (0.8, 0.1), (0.9, 0.02), (0.95, 0.3), (0.3, 0.01)])
def test_speculative_decoding_reduces_to_leviathan(alpha, c):
    m = meas_const({("T", "D"): alpha}, {"T": 1.0, "D": c})
    for k in (1, 2, 3, 5, 8, 13):
        got = predict(Config(("D",), ((k,),)), m)
        assert got.ewif == pytest.approx(ewif_speculative(alpha, c, k), rel=1e-12)
        assert got.tokens_per_step == pytest.approx((1 - alpha ** (k + 1)) / (1 - alpha), rel=1e-12)
        assert got.seconds_per_step == pytest.approx(1 + k * c, rel=1e-12)


@pytest.mark.parametrize("alpha,c", [(0.5, 0.05), (0.8, 0.1), (0.9, 0.02), (0.95, 0.3), (0.7, 0.15)])
def test_search_finds_the_analytic_best_k(alpha, c):
    m = meas_const({("T", "D"): alpha}, {"T": 1.0, "D": c})
    res = search(m, SearchSpace(("D",), max_quota=48))
    k_star = best_speculative_k(alpha, c, 48)
    assert res.best.config == Config(("D",), ((k_star,),))
    assert res.best.prediction.ewif == pytest.approx(ewif_speculative(alpha, c, k_star), rel=1e-12)


@pytest.mark.parametrize("n,k", [(1, 1), (2, 3), (3, 4), (5, 2)])
def test_vertical_cascade_reduces_to_the_paper(n, k):
    # D1 reviews n times a k-token draft of D2 (the paper's fixed-number-of-reviews setting)
    a, ap, c1, c2 = 0.8, 0.6, 0.1, 0.02
    m = meas_const({("T", "D1"): a, ("D1", "D2"): ap, ("T", "D2"): 0.5}, {"T": 1.0, "D1": c1, "D2": c2})
    got = predict(Config(("D1", "D2"), ((0, 0), (0, k)), calls=((n, 0), (0, 1))), m)
    assert got.ewif == pytest.approx(ewif_vertical(a, ap, c1, c2, n, k), rel=1e-12)


@pytest.mark.parametrize("k1,k", [(1, 1), (2, 5), (4, 4), (3, 10)])
def test_horizontal_cascade_reduces_to_the_paper(k1, k):
    # D1 fills positions 1..k1, one token per pass (its review of a 1-token Max-Gram draft never accepts:
    # alpha(D1, maxgram) = 0), Max-Gram fills k1+1..k for free
    a1, a2, c1 = 0.85, 0.4, 0.12
    m = meas_const({("T", "D1"): a1, ("T", MAXGRAM): a2, ("D1", MAXGRAM): 0.0}, {"T": 1.0, "D1": c1, MAXGRAM: 0.0})
    got = predict(Config(("D1", MAXGRAM), ((k1, k), (0, 1))), m)
    want = ewif_horizontal([a1] * k1 + [a2] * (k - k1), [c1] * k1)
    assert got.ewif == pytest.approx(want, rel=1e-9)


def test_search_finds_the_analytic_horizontal_optimum():
    a1, a2, c1 = 0.9, 0.45, 0.08
    m = meas_const({("T", "D1"): a1, ("T", MAXGRAM): a2, ("D1", MAXGRAM): 0.0}, {"T": 1.0, "D1": c1, MAXGRAM: 0.0})
    space = SearchSpace(("D1", MAXGRAM), k_grid=tuple(range(0, 25)), max_quota=24, bottom_lengths=(None,), include_plain=False)
    res = search(m, space)
    best = max(
        ewif_horizontal([a1] * k1 + [a2] * (k - k1), [c1] * k1) for k in range(1, 25) for k1 in range(1, k + 1)
    )
    got = res.best_per_chain[("D1", MAXGRAM)]
    assert got.prediction.ewif == pytest.approx(best, rel=1e-9)
    k1, k = got.config.k[0]
    assert ewif_horizontal([a1] * k1 + [a2] * (k - k1), [c1] * k1) == pytest.approx(best, rel=1e-9)
    # the high-acceptance model takes the early positions: dropping it for Max-Gram alone is worse
    assert res.best_per_chain[(MAXGRAM,)].score < got.score


def test_measured_costs_change_the_answer():
    """With memory-bound costs (a review of 8 tokens ~1.6x one token) k grows; with compute-bound, it shrinks."""
    prof = {("T", "D"): 0.8}
    flat = Measurements("T", {"T": CostCurve.linear(0.30, 0.02), "D": C(0.044)}, {k: P(v) for k, v in prof.items()})
    steep = Measurements("T", {"T": CostCurve.linear(0.05, 0.045), "D": C(0.044)}, {k: P(v) for k, v in prof.items()})
    k_flat = search(flat, SearchSpace(("D",))).best.config.k[0][0]
    k_steep = search(steep, SearchSpace(("D",), include_plain=False)).best.config.k[0][0]
    assert k_flat > k_steep
    # and where verifying costs almost as much as decoding token by token (a Q4 target on this CPU),
    # drafting does not pay: plain decoding wins, as measured in environment.md
    assert search(steep, SearchSpace(("D",))).best.config == Config()


def test_restart_profiles_two_state_chain():
    """Drafts after a rejection and after a full acceptance have their own acceptance: a Markov chain."""
    am, ah, c = 0.5, 0.9, 0.1
    base = {("T", "D"): P(0.7)}
    m = Measurements("T", {"T": C(1.0), "D": C(c)}, base, restart={("T", "D"): (P(am), P(ah))})
    got = predict(Config(("D",), ((1,),)), m)
    pi_hit = am / (1 - ah + am)  # k = 1: a step ends after a hit exactly when its one token is accepted
    want_t = 1 + (1 - pi_hit) * am + pi_hit * ah
    assert got.tokens_per_step == pytest.approx(want_t, rel=1e-9)
    assert got.seconds_per_step == pytest.approx(1 + c, rel=1e-12)
    # equal restart profiles change nothing
    same = Measurements("T", m.costs, base, restart={("T", "D"): (P(0.7), P(0.7))})
    for k in (1, 3, 6):
        assert predict(Config(("D",), ((k,),)), same).ewif == pytest.approx(ewif_speculative(0.7, c, k), rel=1e-9)
    back = Measurements.from_json(json.loads(json.dumps(m.to_json())))
    assert back.restart == m.restart and back.acceptance == m.acceptance and back.costs == m.costs


def test_a_broken_model_is_caught():
    """A variant that charges the review for k tokens instead of k + 1 disagrees with the formula."""

    class Broken(CascadeModel):
        def predict(self, config):
            p = super().predict(config)
            k = config.k[0][0]
            c = self.meas.cost("T")
            p.seconds_per_step += c(k) - c(k + 1)
            return p

    m = Measurements("T", {"T": CostCurve.linear(1.0, 0.1), "D": C(0.05)}, {("T", "D"): P(0.8)})
    good = CascadeModel(m).predict(Config(("D",), ((4,),)))
    bad = Broken(m).predict(Config(("D",), ((4,),)))
    want_t = (1 - 0.8**5) / 0.2
    assert good.tokens_per_second == pytest.approx(want_t / (1.0 + 0.1 * 5 + 4 * 0.05), rel=1e-12)
    assert bad.tokens_per_second != pytest.approx(want_t / (1.0 + 0.1 * 5 + 4 * 0.05), rel=1e-3)


# ------------------------------------------------------------------------------------------------ the engine


_MASK = (1 << 61) - 1


def _h(seq, salt: int, n: int = 6) -> int:
    h = (salt * 0x9E3779B97F4A7C15) & _MASK
    for t in seq[-n:]:
        h = ((h ^ (int(t) + 1)) * 0x100000001B3) & _MASK
        h ^= h >> 29
    return h


class HashLM:
    """Greedy behaviour fixed by a hash of the context: the target's next token is a hash of the last six
    tokens; a drafter agrees with it with probability `alpha`, independently at every context, and says
    a random wrong token otherwise. Its forward passes are charged to a cost curve instead of timed."""

    def __init__(self, name: str, alpha: float = 1.0, salt: int = 1, cost: CostCurve | None = None, vocab: int = 512):
        self.info = ModelInfo(name=name, vocab_size=vocab, n_params=1, eos_token_ids=frozenset())
        self.alpha, self.salt, self.cost, self.vocab = alpha, salt, cost, vocab
        self._tokens: list[int] = []
        self.seconds = 0.0

    @property
    def cached_tokens(self):
        return self._tokens

    def begin(self, prompt):
        return list(prompt)

    def rollback(self, n):
        del self._tokens[n:]

    def greedy(self, ctx) -> int:
        y = _h(ctx, 0) % self.vocab
        if self.alpha >= 1.0 or (_h(ctx, self.salt) % 1_000_003) / 1_000_003 < self.alpha:
            return y
        return (y + 1 + _h(ctx, self.salt + 7) % (self.vocab - 1)) % self.vocab

    def extend(self, tokens, logits_from=0):
        start = len(self._tokens)
        self._tokens.extend(int(t) for t in tokens)
        if self.cost is not None:
            self.seconds += self.cost(len(tokens))
        out = np.zeros((len(tokens) - logits_from, self.vocab), dtype=np.float32)
        for i in range(logits_from, len(tokens)):
            out[i - logits_from, self.greedy(self._tokens[: start + i + 1])] = 10.0
        return out


COSTS = {"T": CostCurve.linear(1.0, 0.05), "A": CostCurve.linear(0.15, 0.03), "B": CostCurve.linear(0.05, 0.02)}
ALPHA = {"A": 0.8, "B": 0.6}


def _engine_speed(drafters, k, n_new=1500):
    t = HashLM("T", cost=COSTS["T"])
    ds = [HashLM(d, ALPHA[d], salt=3 + 2 * i, cost=COSTS[d]) for i, d in enumerate(drafters)]
    res = Cascade(t, ds, CascadeConfig.make(k)).generate([7], n_new)  # a one-token prompt: no prefill to discount
    steps = res.metrics.target_steps
    return n_new / steps, n_new / (t.seconds + sum(d.seconds for d in ds))


@pytest.mark.parametrize("drafters,k", [
    (("A",), [[4]]),
    (("B",), [[7]]),
    (("A", "B"), [[4, 8], [0, 3]]),   # vertical + horizontal
    (("A", "B"), [[6, 6], [0, 3]]),   # pure vertical
    (("A", "B"), [[2, 10], [0, 1]]),  # mostly horizontal
])
def test_model_matches_the_engine_with_measured_costs(drafters, k):
    """The real engine on synthetic models with known acceptance and non-constant (linear) costs."""
    a, b = ALPHA["A"], ALPHA["B"]
    meas = Measurements("T", COSTS, {
        ("T", "A"): P(a), ("T", "B"): P(b),
        ("A", "B"): P(a * b + (1 - a) * (1 - b) / 511),  # agree when both are right, or wrong alike
    })
    want_tpp, want_rate = _engine_speed(drafters, k)
    got = predict(Config(drafters, tuple(tuple(r) for r in k)), meas)
    assert got.tokens_per_step == pytest.approx(want_tpp, rel=0.06)
    assert got.tokens_per_second == pytest.approx(want_rate, rel=0.06)


@pytest.fixture(scope="module")
def hash_calibration():
    t = HashLM("T", cost=COSTS["T"])
    ds = {d: HashLM(d, ALPHA[d], salt=3 + 2 * i, cost=COSTS[d]) for i, d in enumerate(("A", "B"))}
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [3, 3]]
    cal = calibrate(t, "T", ds, prompts, 150, {MAXGRAM: MaxGram()}, reps=1, progress=False)
    cal.measurements.costs.update(COSTS)  # charge the same synthetic costs the engine run is charged
    return t, ds, prompts, cal


@pytest.mark.parametrize("drafters,k,mg", [
    (("A",), ((4,),), None),
    (("A", "B"), ((4, 8), (0, 3)), None),
    (("A", "B"), ((2, 10), (0, 1)), None),
    (("B", MAXGRAM), ((5, 9), (0, 3)), None),
    (("A", "B", MAXGRAM), ((3, 8, 12), (0, 2, 6), (0, 0, 4)), 2),
])
def test_replay_reproduces_the_engine(hash_calibration, drafters, k, mg):
    """Along the recorded target path the replay IS the engine: same number of target passes, exactly."""
    t, ds, prompts, cal = hash_calibration
    models = [ds.get(d) or MaxGram() for d in drafters]
    for m in (t, *ds.values()):
        m.seconds = 0.0
    steps = 0
    for p in prompts:
        steps += Cascade(t, models, CascadeConfig.make([list(r) for r in k], bottom_length=mg)).generate(p, 150).metrics.target_steps
    rp = replay(Config(drafters, k, mg), cal.measurements, cal.traces)
    assert rp.target_steps == steps and rp.tokens == 150 * len(prompts)
    if MAXGRAM not in drafters:  # (without a bigram table Max-Gram proposes nothing where it has no match)
        engine_seconds = t.seconds + sum(d.seconds for d in ds.values())
        assert rp.seconds == pytest.approx(engine_seconds, rel=0.05)


# ------------------------------------------------------------------------------------------------ measuring


def test_profile_from_runs_recovers_iid_acceptance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 50, size=6000)
    g = np.where(rng.random(6000) < 0.7, y, (y + 1) % 50)
    prof, st = profile_from_runs([_runs_neural(y, g)], max_len=8)
    assert st["reached"][0] == 6000
    for i in range(1, 5):
        assert prof.at(i) == pytest.approx(0.7, abs=0.03)


def test_runs_count_only_what_was_observed():
    y = np.array([1, 2, 3, 4])
    run, obs = _runs_neural(y, np.array([1, 2, 9, 4]))
    assert run.tolist() == [2, 1, 0, 1] and obs.tolist() == [4, 3, 2, 1]
    run, obs = _runs_proposals(y, [[1, 2, 3, 4, 5], [2, 0], [], [4, 4]])
    assert run.tolist() == [4, 1, 0, 1] and obs.tolist() == [4, 2, 0, 1]
    # a run that reaches the end is censored, not rejected: position 2 is seen by 1 of 2 starts, accepted
    prof, st = profile_from_runs([(np.array([2, 1]), np.array([2, 1]))], max_len=4)
    assert st["reached"] == [2, 1] and st["accepted"] == [2, 1]


def test_cost_curve_interpolates_and_is_monotone():
    c = CostCurve((1, 2, 4, 8), (0.3, 0.32, 0.38, 0.47))
    assert c(3) == pytest.approx(0.35)
    assert c(16) == pytest.approx(0.47 + 8 * (0.47 - 0.38) / 4)
    assert C(0.2)(40) == 0.2
    a, b = fit_prefill([(100, 1.1), (200, 2.1), (300, 3.1)])
    assert a == pytest.approx(0.1) and b == pytest.approx(0.01)

    class Slow(HashLM):
        def extend(self, tokens, logits_from=0):
            import time

            time.sleep(0.0005 * len(tokens))
            return super().extend(tokens, logits_from)

    curve = measure_cost_curve(Slow("S"), [1, 2, 3], list(range(40)), grid=(1, 4, 16), reps=1)
    assert list(curve.seconds) == sorted(curve.seconds) and curve.seconds[-1] > curve.seconds[0]


def test_one_token_passes_are_timed_as_plain_decoding_runs_them():
    """A backend that reuses the compute graph of a same-shaped pass (llama.cpp does) makes consecutive
    one-token passes cheaper than one after a pass of another size: the curve's one-token price is the
    consecutive one, what plain decoding pays."""

    class Reusing(HashLM):
        last = None

        def extend(self, tokens, logits_from=0):
            import time

            time.sleep((0.001 if len(tokens) == self.last else 0.006) + 0.0005 * len(tokens))
            self.last = len(tokens)
            return super().extend(tokens, logits_from)

    curve = measure_cost_curve(Reusing("R"), [1, 2, 3], list(range(40)), grid=(1, 4, 16), reps=3)
    assert curve.seconds[0] < 0.004 < 0.0075 < curve.seconds[1]  # ~1.5 ms consecutive; 4 tokens ~8 ms


def test_tune_pipeline_on_synthetic_models():
    """Calibration on the engine's output, profiles close to the known acceptance, a searched config."""
    t, a, b = HashLM("T"), HashLM("A", 0.85, salt=3), HashLM("B", 0.55, salt=5)
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    res = tune(t, "T", {"A": a, "B": b}, prompts, 120, ["A", "B", MAXGRAM], reps=1, progress=False)
    m = res.measurements
    assert m.profile("T", "A").at(1) == pytest.approx(0.85, abs=0.08)
    assert m.profile("T", "B").at(1) == pytest.approx(0.55, abs=0.1)
    assert set(m.costs) == {"T", "A", "B", MAXGRAM}
    assert res.calibration.workload == [(3, 120), (4, 120), (2, 120)]
    best = res.result.best
    assert best.score == max(r.score for r in res.result.ranked)
    # the winner runs in the engine and gives the target's own text
    names = {"A": a, "B": b}
    ds = [names.get(d) or MaxGram() for d in best.config.drafters]
    cfg = CascadeConfig.make([list(r) for r in best.config.k], bottom_length=best.config.bottom_length) if ds else None
    out = Cascade(t, ds, cfg).generate(prompts[0], 120).tokens
    assert out == res.calibration.traces[0].tokens


# ------------------------------------------------------------------------------------------------ config files


def test_tuned_config_round_trips(tmp_path):
    from csdrafting.flags import add_cascade_args, spec_from_args
    from csdrafting.spec import CascadeSpec

    cfg = Config(("qwen2.5-coder-1.5b:Q4_K_M", "qwen2.5-coder-0.5b:Q4_K_M", MAXGRAM), ((3, 7, 13), (0, 2, 6), (0, 0, 5)), 4)
    spec = to_spec(cfg, "qwen2.5-coder-1.5b:F32", threads=2, note="predicted 6.10 tok/s")
    path = tmp_path / "tuned.json"
    spec.save(path)
    back = CascadeSpec.load(path)
    assert back == spec
    assert back.cascade_config().k.cumulative == cfg.k and back.bottom_length == 4 and back.lenience == 1.0
    assert json.loads(path.read_text())["k_spelling"] == "cumulative"
    # what generate, demo and bench do with --config
    import argparse

    p = argparse.ArgumentParser()
    add_cascade_args(p)
    assert spec_from_args(p.parse_args(["--config", str(path)])) == spec


@pytest.mark.parametrize("argv,bad", [
    (["--target", "no-such-model:Q4_K_M"], "no-such-model"),
    (["--drafters", "qwen2.5-coder-0.5b:Q4_K_M", "qwen2.5-coder-7b:Q4_K_M"], "qwen2.5-coder-7b"),
    (["--drafters", "qwen2.5-coder-0.5b:Q5_X"], "Q5_X"),
])
def test_unavailable_model_gets_a_clear_error(tmp_path, capsys, argv, bad):
    out = tmp_path / "tuned.json"
    rc = tune_cli.main(argv + ["--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and bad in err
    assert not out.exists()


def test_cli_tune_then_validate_on_synthetic_models(tmp_path, monkeypatch, capsys):
    """The whole CLI path (loading models and prompts stubbed): config + report written, then validated."""
    from csdrafting.spec import CascadeSpec

    paths = {n: tmp_path / f"{n}.gguf" for n in ("T", "A", "B")}
    for p in paths.values():
        p.write_bytes(b"")  # a model reference may be a path: these exist, so configs naming them validate
    # validating a cost-aware config measures the target's curve and keeps it in the cache: not the user's
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "cache"))
    t = HashLM(str(paths["T"]))
    ds = {str(paths["A"]): HashLM(str(paths["A"]), 0.85, salt=3), str(paths["B"]): HashLM(str(paths["B"]), 0.5, salt=5)}
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [3, 3, 3]]
    def load_models(target, refs, *a):
        return t, {r: ds[r] for r in refs if r != MAXGRAM}, {r: MaxGram() for r in refs if r == MAXGRAM}

    def load_prompts(target, dataset, n, split, *a):
        return [(f"{split}/{i}", p) for i, p in enumerate((prompts[:2] if split == "calibration" else prompts[2:])[:n])]

    for mod in (pipeline, validate):  # the library's loading, stubbed where the command's run calls it
        monkeypatch.setattr(mod, "load_models", load_models)
        monkeypatch.setattr(mod, "load_prompts", load_prompts)
    out = tmp_path / "tuned.json"
    rc = tune_cli.main(["--target", str(paths["T"]), "--drafters", str(paths["A"]), str(paths["B"]), MAXGRAM,
                        "--out", str(out), "--prompts", "2", "--max-new-tokens", "80", "--reps", "1", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "best:" in text and "predicted" in text and "raced best" in text
    spec = CascadeSpec.load(out)
    report = json.loads((tmp_path / "tuned.report.json").read_text())
    assert spec.target == str(paths["T"]) and spec.lenience == 1.0 and "raced best" in spec.note
    assert report["settings"]["split"] == "calibration" and report["settings"]["prompt_ids"] == ["calibration/0", "calibration/1"]
    # the race: the static search's best against cost-aware candidates, measured; the winner is written
    race = report["race"]
    assert race[0]["spec"]["drafters"] == report["best"]["drafters"] and race[0]["config"].startswith("static best")
    assert any(r["spec"]["drafters"] == ["suffix"] and r["spec"]["dynamic"] for r in race)
    assert all(r["identical_to_plain"] == "2/2" for r in race)
    winner = max(race, key=lambda r: r["median_speedup"])
    assert spec.drafters == winner["spec"]["drafters"] and spec.dynamic == winner["spec"]["dynamic"]
    if spec.dynamic and "suffix" in spec.drafters:  # its calibration was written beside the config
        assert (tmp_path / "tuned.suffix.json").is_file()
    # a cost-aware suffix-drafter config (what the race may write) is validated too: measured, not predicted
    dyn = tmp_path / "dyn.json"
    CascadeSpec(target=str(paths["T"]), drafters=["suffix"], k=[[8]], dynamic=True).save(dyn)
    rc = tune_cli.main(["--validate", str(out), "--prompts", "2", "--max-new-tokens", "60", "--no-progress",
                        "--also", str(dyn), "--validate-out", str(tmp_path / "val.json")])
    text = capsys.readouterr().out
    assert rc == 0 and "tuned config (*)" in text and "0 mismatches" in text
    val = json.loads((tmp_path / "val.json").read_text())
    rows = val["rows"]
    assert rows[0]["tuned"] and any(r["drafters"] == [] for r in rows)
    assert all(r["measured_tokens_per_pass"] >= 1 for r in rows)
    suffix_row = next(r for r in rows if r["drafters"] == ["suffix"] and "cost-aware" in r["config"])
    assert suffix_row["predicted"] is None and suffix_row["measured"] > 0 and val["mismatches"] == []


def test_validation_grid_configs_run_in_the_engine():
    grid = validate.validation_grid(["big", "small", MAXGRAM])
    assert Config() in grid and Config(("small",), ((8,),)) in grid and len(grid) == len(set(grid))
    for c in grid:
        if c.drafters:
            CascadeConfig.make([list(r) for r in c.k]).check_levels(len(c.drafters))


def test_validate_rejects_a_config_naming_a_missing_model(tmp_path, capsys):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"target": "qwen2.5-coder-1.5b:F32", "drafters": ["/nowhere/drafter.gguf", "maxgram"],
                                "k": [[4, 12], [0, 8]]}))
    rc = tune_cli.main(["--validate", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "/nowhere/drafter.gguf" in err and "neither a model of the store" in err


def test_tune_subcommand_is_wired(capsys):
    from csdrafting.cli import main

    assert main(["tune", "--target", "nope:F32", "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err


def test_bad_numbers_are_rejected(capsys):
    assert tune_cli.main(["--prompts", "0", "--no-progress"]) == 2
    assert "--prompts" in capsys.readouterr().err


def test_race_rationale_says_whether_the_neural_level_pays():
    from csdrafting.tune.race import neural_rationale

    def row(label, speedup, drafters):
        return {"config": label, "median_speedup": speedup, "spec": {"drafters": drafters}}

    keep = neural_rationale([row("suffix", 1.2, ["suffix"]), row("routed", 1.5, ["qwen2.5-coder-0.5b:Q4_K_M", "suffix"])])
    assert keep.startswith("neural level: worth keeping") and "1.25x" in keep
    drop = neural_rationale([row("suffix", 1.6, ["suffix"]), row("vertical", 1.1, ["m.gguf", "suffix"])])
    assert drop.startswith("neural level: not worth keeping")
    assert "no candidate" in neural_rationale([row("suffix", 1.0, ["suffix"])])
