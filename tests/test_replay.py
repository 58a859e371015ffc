"""The what-if replay (bench/replay.py) runs the engine against a target that replays a reference output: the
same steps, drafts, acceptances and priced time as the engine on the real model."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import table_lm
from csdrafting import Cascade, CascadeConfig
from csdrafting.bench import replay as rp
from csdrafting.cascade.planning import CostCurve
from csdrafting.drafters.suffix import Calibration, SuffixDrafter, default_calibration
from csdrafting.protocol import CSDraftingError

# a compute-bound curve with the shape of the 1.5B Q4_K_M target's (seconds: the engine's own drafting time,
# microseconds here and counted by the planner in both runs, is then negligible in its sums)
CURVE = CostCurve((1, 2, 4, 8, 16, 17, 32, 33, 64, 65), (1.0, 1.8, 2.9, 6.8, 10.8, 11.1, 15.1, 16.5, 29.8, 32.3))


def _copying_case(seed: int, vocab: int = 40, prompt_len: int = 90):
    """A target whose greedy next token depends on the last two tokens, and a prompt that is its own greedy
    trajectory: once the output meets a pair the prompt holds, it copies the prompt from there."""
    rng = np.random.default_rng(seed)
    target = table_lm.TableLM(rng.normal(0, 2.0, size=(vocab, vocab, vocab)), "table-target", eos=None)
    seq = [int(rng.integers(1, vocab)), int(rng.integers(1, vocab))]
    while len(seq) < prompt_len:
        seq.append(int(np.argmax(target.table[seq[-2], seq[-1]])))
    return target, seq


@pytest.mark.parametrize("cap, ceiling", [(16, 0.995), (64, 0.98), (64, 0.9)])
def test_replay_walks_the_engines_steps(cap, ceiling):
    drafted_somewhere = False
    for seed in range(4):
        target, prompt = _copying_case(seed)
        config = CascadeConfig.make([[cap]], dynamic=True, costs=[CURVE, None])
        res = Cascade(target, [SuffixDrafter(default_calibration(), max_confidence=ceiling)], config).generate(prompt, 120)
        m = res.metrics
        ref = rp.Reference("toy", str(seed), prompt, res.tokens, 120)
        got = rp.replay(ref, SuffixDrafter(default_calibration(), max_confidence=ceiling), CURVE, cap)
        assert (got.steps, got.drafted, got.accepted) == (m.target_steps, m.levels[1].drafted, m.levels[1].accepted)
        assert got.seconds == pytest.approx(sum(CURVE(n) for n in _review_sizes(m)))
        drafted_somewhere |= got.accepted > 0
    assert drafted_somewhere  # the cases exercise drafting, not only plain steps


def test_a_reference_cut_short_ends_the_replay_there():
    """An output that stopped at an end token the replay was not given (or at a smaller max_new_tokens) is
    replayed to its end and no further. The stand-in target knows greedy tokens only: asked for logits (what
    sampling or lenience would need), it refuses."""
    target, prompt = _copying_case(2)
    out = Cascade(target).generate(prompt, 120).tokens[:50]
    got = rp.replay(rp.Reference("toy", "cut", prompt, out, 120), SuffixDrafter(default_calibration()), CURVE, 64)
    assert got.plain_seconds == pytest.approx(50 * CURVE(1)) and got.accepted <= 49 and 1 <= got.steps <= 50
    with pytest.raises(CSDraftingError, match="greedy tokens only"):
        rp._ReferenceTarget(rp.Reference("toy", "x", prompt, out, 120), frozenset(), CURVE).extend([1])


class _SlowSuffix(SuffixDrafter):
    """The suffix drafter on a machine so busy that each proposal takes 10 ms."""

    def propose_scored(self, seq, n):
        time.sleep(0.01)
        return super().propose_scored(seq, n)


def test_a_busy_machine_does_not_change_the_replay():
    """The planner weighs drafting time against the review's; a replay stops that clock, so a drafter slowed
    down (by load on the machine replaying) plans exactly as a fast one, even where a step costs ~ms (with the
    clock running, the 10 ms spent make longer drafts pay: 4 steps instead of 20 here)."""
    fast = CostCurve(CURVE.ns, tuple(s / 1000 for s in CURVE.seconds))  # 1 ms a token: the sleeps would matter
    target, prompt = _copying_case(3)
    ref = rp.Reference("toy", "3", prompt, Cascade(target).generate(prompt, 80).tokens, 80)
    a = rp.replay(ref, SuffixDrafter(default_calibration(), max_confidence=0.9), fast, 64)
    b = rp.replay(ref, _SlowSuffix(default_calibration(), max_confidence=0.9), fast, 64)
    assert a.accepted > 0 and (a.steps, a.drafted, a.accepted, a.seconds) == (b.steps, b.drafted, b.accepted, b.seconds)


def _review_sizes(m) -> list[int]:
    """Tokens of each target review (its draft + 1), from the review counts: reviewed_by_position[i] counts
    the reviews whose draft had more than i tokens."""
    lv = m.levels[0]
    r = list(lv.reviewed_by_position) + [0]
    sizes = [1] * (lv.reviews - r[0])
    for n in range(1, len(r)):
        sizes += [n + 1] * (r[n - 1] - r[n])
    assert len(sizes) == m.target_steps
    return sizes


def test_oracle_is_the_ceiling():
    target, prompt = _copying_case(0)
    out = Cascade(target).generate(prompt, 80).tokens
    ref = rp.Reference("toy", "0", prompt, out, 80)
    o = rp.oracle(ref, CURVE, 64)
    assert o.steps == 2 and o.speedup == pytest.approx(80 / (CURVE(65) + CURVE(15)))  # drafts of 64, then 14
    # on this lumpy curve a 64-token draft costs more per token than 63 (65 rows: past a 64-row group), and a
    # fixed 64 loses to the drafter's planned lengths here; the oracle at its best length does not
    assert rp.best_oracle_length(CURVE) == 63 and rp.best_oracle_length(CURVE, 40) == 31
    best = rp.oracle(ref, CURVE)
    for cap in (16, 64):
        assert best.speedup >= rp.replay(ref, SuffixDrafter(default_calibration()), CURVE, cap).speedup


def _bench_run(tmp_path, target, prompt, out):
    (tmp_path / "prompts.json").write_text(json.dumps(
        {"eos": [0], "prompts": [{"phase": "eval", "dataset": "toy", "id": "p0", "ids": prompt, "turns": ["x"]}]}))
    rec = {"phase": "eval", "dataset": "toy", "prompt_id": "p0", "method": "plain", "tokens": out,
           "new_tokens": len(out), "max_new_tokens": 120, "target_cost_curve": CURVE.to_json()}
    other = dict(rec, method="csd")
    (tmp_path / "records.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(other) + "\n")


def test_the_command_line_reads_a_bench_run(tmp_path, capsys):
    target, prompt = _copying_case(1)
    out = Cascade(target).generate(prompt, 120).tokens
    _bench_run(tmp_path, target, prompt, out)
    refs, curve, eos = rp.load_run(tmp_path)
    assert [r.output for r in refs] == [out] and curve == CURVE and eos == frozenset([0])
    assert rp.main([str(tmp_path), "--cap", "1,64", "--max-confidence", "0.98"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| cap | max_confidence | adapt_weight | learn_up | longest_copy | calibration | toy (1)")
    assert lines[0].endswith("| all (1), geometric mean |")
    # one prompt: its median, worst and geometric mean are the same speedup
    cells = [[float(c.split("x")[0]) for c in ln.split(" | ")[6:8]] for ln in lines[2:]]
    assert len(cells) == 2 and all(med == round(mean, 2) for med, mean in cells)
    rows = {ln.split(" | ")[0]: ln for ln in lines[1:]}
    assert set(rows) == {"| oracle, k=63", "| 1", "| 64"}
    # a cap of 1 cannot beat plain by much on this curve (2 tokens cost 1.8 passes); 64 copies long
    one, long = (float(rows[k].split(" | ")[6].split("x")[0]) for k in ("| 1", "| 64"))
    assert one < 1.15 < long
    # calibrations side by side: one that never saw the request's matches drafts nothing, so it runs at plain
    # speed, unless in-request learning may raise confidences (`--learn-up 1`): then it learns to trust the copy
    none = tmp_path / "unmeasured.json"
    Calibration({"bigram": [1, 10]}).save(none)
    assert rp.main([str(tmp_path), "--cap", "64", "--max-confidence", "0.98", "--adapt-weight", "0,8",
                    "--learn-up", "0,1", "--calibration", f"packaged,{none}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 64 ")]
    speed = {tuple(ln.split(" | ")[i] for i in (2, 3, 5)): float(ln.split(" | ")[6].split("x")[0]) for ln in lines}
    assert len(speed) == 8 and speed[("8", "0", "packaged")] == long
    assert speed[("0", "0", str(none))] == speed[("8", "0", str(none))] == speed[("0", "1", str(none))] == 1.0
    assert speed[("8", "1", str(none))] > 1.0 and speed[("0", "0", "packaged")] > 1.0
    assert rp.main([str(tmp_path), "--calibration", str(tmp_path / "missing.json")]) == 2


def test_bad_runs_are_refused(tmp_path, capsys):
    assert rp.main([str(tmp_path / "missing")]) == 2
    assert "not a readable bench run" in capsys.readouterr().err
    (tmp_path / "prompts.json").write_text(json.dumps({"prompts": []}))
    (tmp_path / "records.jsonl").write_text("")
    assert rp.main([str(tmp_path)]) == 2
    assert "no single-turn `plain` eval records" in capsys.readouterr().err


@pytest.mark.parametrize("route", [False, True])
def test_replay_of_a_cascade_with_a_neural_drafter(route):
    """A cascade whose neural drafter runs for real (tiny transformers here, the 0.5B in a replay of the F32
    tier) and a statistical level below it, routed or not: the replay takes the same steps, drafts, routing
    decisions and priced time as the engine on the real target, when the engine's planner is given the same
    clock (the drafter's passes priced by its curve)."""
    import tiny
    from csdrafting.cascade.levels import ModelLevel
    from csdrafting.cascade.rows import tail_yield
    from test_dynamic import CHEAP, MEMORY, _calibration
    from test_greedy_exact import PROMPTS, _family

    target, drafters = _family(tiny.causal)
    T, D = tiny.wrap(target, "t"), tiny.wrap(drafters[0], "d")
    config = CascadeConfig.make([[6, 12], [0, 4]], dynamic=True, costs=[MEMORY, CHEAP, None], route=route)
    drafted = 0
    for i, prompt in enumerate(PROMPTS + [PROMPTS[0] * 3]):
        # what the drafter's tails yielded so far is kept per drafter (rows.tail_yield): the replay starts from the
        # state the real run started from
        tails = dict(vars(tail_yield(D)))
        real = Cascade(T, [D, SuffixDrafter(_calibration())], config)
        real.clock = lambda c=real: sum(lv.priced for lv in c.levels[1:] if isinstance(lv, ModelLevel))
        real.adapt_costs = False  # as the replay: reviews priced by the curve alone, not by the machine's timings
        # where the texts ended is kept per target (rows.text_ends), and the replay's target is a stand-in: it is
        # given what the real target's cascades had learned before this prompt
        ends = real.ends.copy()
        res = real.generate(prompt, 40)
        m = res.metrics
        ref = rp.Reference("toy", str(i), prompt, res.tokens, 40)
        vars(tail_yield(D)).update(tails)
        got = rp.replay_cascade(ref, [D, SuffixDrafter(_calibration())], config, MEMORY, ends=ends)
        assert (got.steps, got.drafted, got.accepted) == (m.target_steps, m.levels[1].drafted, m.levels[1].accepted)
        drafting = real.levels[1].priced
        assert got.drafting_seconds == pytest.approx(drafting) and drafting > 0
        assert got.seconds == pytest.approx(sum(MEMORY(n) for n in _review_sizes(m)) + drafting)
        assert {k: v for k, v in got.routes.items() if k != "seconds"} == (
            {k: v for k, v in m.routes.items() if k != "seconds"} if route else {})
        drafted += m.levels[2].drafted
    assert drafted > 0  # the statistical level drafted somewhere, so the cascade's lower level took part
