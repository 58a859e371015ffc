"""The benchmark's logic, without timing: method list, horizontal cascade and oracle in the engine, the
record store and resume (an exception mid-run, a killed process, a line cut short), planning and the
draft-length choice, and the summary math on synthetic records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from csdrafting.bench.executors import EngineExecutor, review_passes
from csdrafting.bench.methods import (
    ENGINE,
    HF,
    LLAMA,
    Oracle,
    VERTICAL_REVIEW_K,
    build_methods,
    horizontal_k,
    vertical_k,
)
from csdrafting.bench.runner import (
    CALIBRATION,
    EVAL,
    ExecutorPool,
    PromptIds,
    RecordStore,
    choose_lengths,
    execute,
    plan,
    swapped,
)
from csdrafting.bench.summary import aggregate, exactness_failures, headline_lines, render_markdown, write_summary
from csdrafting.cascade.config import CascadeConfig, KMatrix
from csdrafting.cascade.engine import Cascade
from csdrafting.drafters.maxgram import MaxGram
from csdrafting.protocol import CSDraftingError
from csdrafting.spec import CascadeSpec
from table_lm import family

T = "qwen2.5-coder-1.5b:F32"
D = "qwen2.5-coder-0.5b:Q4_K_M"
SPEC = CascadeSpec(target=T, drafters=[D, "maxgram"], k=[[3, 6], [0, 4]])
GRIDS = {"sd": (2, 3), "maxgram": (2, 4), "oracle": (4, 8)}


# ------------------------------------------------------------------------------------------------ methods


# a two-level cascade (the built-in default has a single drafter, which has no vertical/horizontal rows)
CASCADE = CascadeSpec(target="qwen2.5-coder-1.5b:F32", drafters=["qwen2.5-coder-0.5b:Q4_K_M", "maxgram"], k=[[4, 12], [0, 8]])


def test_method_list_from_a_cascade_spec():
    methods = build_methods(CASCADE, peers=("llama-pld", "hf-assisted", "hf-pld"))
    names = [m.name for m in methods]
    assert names == ["plain", "sd:qwen2.5-coder-0.5b:Q4_K_M", "maxgram", "vertical", "horizontal", "csd", "oracle",
                     "llama-plain", "llama-pld", "hf-plain", "hf-assisted", "hf-pld"]
    by = {m.name: m for m in methods}
    # every family's baseline comes before its methods
    for m in methods:
        assert names.index(m.baseline) <= names.index(m.name)
    assert by["plain"].resolve() == {"k": None, "lenience": 1.0, "bottom_length": None, "drafters": []}
    assert by["sd:qwen2.5-coder-0.5b:Q4_K_M"].tunable and by["sd:qwen2.5-coder-0.5b:Q4_K_M"].resolve(6)["k"] == [[6]]
    assert by["csd"].resolve()["k"] == [[4, 12], [0, 8]]
    assert by["vertical"].resolve()["k"] == [[4, 4], [0, 8]]  # the target reviews only the 0.5B's tokens
    assert by["horizontal"].resolve()["k"] == [[4, 12], [0, 0]]  # the 0.5B reviews nothing
    assert by["oracle"].resolve(32)["drafters"] == ["oracle"]
    assert by["llama-pld"].family == LLAMA and by["llama-pld"].baseline == "llama-plain"
    assert by["hf-assisted"].family == HF and by["hf-assisted"].drafters == (D,)
    assert by["hf-pld"].resolve()["draft_length"] == 10


def test_method_list_options():
    quick = build_methods(SPEC, calibrate=False)
    assert not any(m.tunable for m in quick)
    assert {m.name: m.resolve().get("draft_length") for m in quick if m.default} == {
        "sd:qwen2.5-coder-0.5b:Q4_K_M": 4, "maxgram": 8, "oracle": 16}
    # one value of a grid is the length to use, calibration prompts or not (it was dropped without them)
    for cal in (False, True):
        fixed = {m.name: m for m in build_methods(SPEC, calibrate=cal, grids={"oracle": (64,)})}["oracle"]
        assert not fixed.tunable and fixed.resolve()["draft_length"] == 64
    only = build_methods(SPEC, methods=("csd",), peers=())
    assert [m.name for m in only] == ["plain", "csd"]
    two = build_methods(SPEC, methods=("sd",), sd_drafters=[D, "qwen2.5-coder-1.5b:Q4_K_M"])
    assert [m.name for m in two] == ["plain", "sd:qwen2.5-coder-0.5b:Q4_K_M", "sd:qwen2.5-coder-1.5b:Q4_K_M"]
    single = CascadeSpec(target=T, drafters=[D], k=[[4]])
    names = [m.name for m in build_methods(single)]
    assert names == ["plain", "sd:qwen2.5-coder-0.5b:Q4_K_M", "maxgram", "vertical", "csd", "oracle"]
    with pytest.raises(CSDraftingError, match="unknown method"):
        build_methods(SPEC, methods=("beam",))
    with pytest.raises(CSDraftingError, match="unknown peer"):
        build_methods(SPEC, peers=("vllm",))
    with pytest.raises(CSDraftingError, match="duplicate"):
        build_methods(SPEC, methods=("sd",), sd_drafters=[D, D])


def test_vertical_and_horizontal_k_from_the_papers_matrix():
    k = KMatrix.parse([[5, 14, 10], [0, 1, 10], [0, 0, 10]], "increments")
    chain = ["a", "b", "maxgram"]
    assert vertical_k(k, 3, chain) == [[5, 0, 0], [0, 1, 0], [0, 0, 10]]
    assert horizontal_k(k) == [[5, 14, 10], [0, 0, 0], [0, 0, 0]]
    # both are valid K matrices; a zero row is allowed below the target only
    KMatrix.parse(vertical_k(k, 3, chain), "increments")
    h = KMatrix.parse(horizontal_k(k), "increments")
    assert [h.reviews(j) for j in range(4)] == [True, False, False, False]
    with pytest.raises(CSDraftingError, match="no draft tokens"):
        KMatrix.parse([[0, 0], [0, 3]])


# ------------------------------------------------------------------------------------------------ engine


def test_vertical_row_is_a_real_vertical_cascade():
    """Where the spec's diagonal is zero (a horizontal-only spec) or the spec has one drafter, the vertical
    row still makes every neural drafter review Max-Gram instead of degenerating into speculative decoding."""
    horizontal_only = CascadeSpec(target=T, drafters=[D, "maxgram"], k=[[10, 14], [0, 0]])
    v = {m.name: m for m in build_methods(horizontal_only)}["vertical"]
    assert v.drafters == (D, "maxgram")
    assert v.resolve()["k"] == [[10, 10], [0, VERTICAL_REVIEW_K]]  # the target sees only the 0.5B's tokens
    one = CascadeSpec(target=T, drafters=[D], k=[[7]])
    v1 = {m.name: m for m in build_methods(one)}["vertical"]
    assert v1.drafters == (D, "maxgram") and v1.resolve()["k"] == [[7, 7], [0, VERTICAL_REVIEW_K]]
    k = KMatrix.parse(v1.resolve()["k"])
    assert k.reviews(0) and k.reviews(1)  # both the target and the 0.5B review
    assert v1.resolve()["from_spec"] is True
    assert not any(m.name == "vertical" for m in build_methods(CascadeSpec(target=T, drafters=["maxgram"], k=[[4]])))


def test_configuration_labels_show_levels_and_k():
    from csdrafting.bench.summary import _key_params

    by = {m.name: m for m in build_methods(CASCADE, calibrate=False, peers=("llama-cpp-ngram-mod",))}
    assert _key_params(by["vertical"].resolve()) == ("levels: target > qwen2.5-coder-0.5b:Q4_K_M > maxgram; "
                                                     "K=[[4,4],[0,8]]")
    assert _key_params(by["sd:qwen2.5-coder-0.5b:Q4_K_M"].resolve()) == "levels: target > qwen2.5-coder-0.5b:Q4_K_M; K=[[4]]"
    assert _key_params(by["plain"].resolve()) == ""
    assert _key_params(by["llama-cpp-ngram-mod"].resolve()) == "llama-speculative-simple --spec-type ngram-mod"
    assert _key_params(by["llama-cpp-plain"].resolve()) == "llama-completion"
    assert _key_params({**by["csd"].resolve(), "lenience": 2.0, "config": {"x": 1}}).endswith("lenience 2.0; config x=1")


def test_engine_methods_pass_extra_config_fields_through():
    """CascadeConfig fields a method names in `config` reach the engine; csd/vertical/horizontal start from
    the spec's own configuration, so new fields the spec carries need no bench change."""
    from dataclasses import dataclass, field as dfield

    from csdrafting.bench.executors import method_config

    spec_cfg = CascadeConfig.make([[3, 6], [0, 4]], lenience=2.0, bottom_length=5)
    cfg = method_config(spec_cfg, {"k": [[4, 4], [0, 8]], "lenience": 2.0, "maxgram_length": 5, "from_spec": True})
    assert cfg.k.cumulative == ((4, 4), (0, 8)) and cfg.lenience == 2.0 and cfg.maxgram_length == 5
    cfg = method_config(CascadeConfig(), {"k": [[4]], "lenience": 1.0, "maxgram_length": None,
                                          "config": {"maxgram_length": 3}})
    assert cfg.maxgram_length == 3
    with pytest.raises(CSDraftingError, match="not a CascadeConfig field"):
        method_config(CascadeConfig(), {"k": [[4]], "config": {"warp_speed": 9}})
    with pytest.raises(CSDraftingError, match="lenience"):
        method_config(CascadeConfig(), {"k": [[4]], "lenience": 1.0, "config": {"lenience": 0.5}})

    @dataclass(frozen=True)
    class Knobs:
        threshold: float = 0.5
        cap: int = 8

    @dataclass(frozen=True)
    class Extended(CascadeConfig):  # a configuration with a field added later, holding a dataclass
        knobs: Knobs = dfield(default_factory=Knobs)

    out = method_config(Extended(), {"k": [[4]], "config": {"knobs": {"threshold": 0.25}, "dynamic": True}})
    assert isinstance(out, Extended) and out.knobs == Knobs(0.25, 8) and out.k.cumulative == ((4,),) and out.dynamic


def _plain(target, prompt, n):
    return Cascade(target, []).generate(prompt, n).tokens


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_horizontal_cascade_is_exact_and_drafters_review_nothing(seed):
    target, (d1, d2) = family(vocab=6, seed=seed, eos=None)
    prompt = [1, 2, 3, 1, 2]
    k = [[2, 4, 7], [0, 0, 0], [0, 0, 0]]  # cumulative: d1 fills 2, d2 up to 4, Max-Gram up to 7
    res = Cascade(target, [d1, d2, MaxGram()], CascadeConfig.make(k)).generate(prompt, 40)
    assert res.tokens == _plain(target, prompt, 40)
    lv = res.metrics.levels
    assert lv[1].reviews == 0 and lv[2].reviews == 0  # nobody below the target reviews
    assert lv[1].forward_passes > 0 and lv[2].forward_passes > 0  # each drafts autoregressively
    assert lv[1].drafted > 0 and lv[2].drafted > 0 and lv[3].drafted > 0
    # vertical counterpart: d1 reviews d2, d2 reviews Max-Gram, the target only sees d1's tokens
    v = Cascade(target, [d1, d2, MaxGram()], CascadeConfig.make([[2, 0, 0], [0, 2, 0], [0, 0, 3]], "increments"))
    res_v = v.generate(prompt, 40)
    assert res_v.tokens == res.tokens
    assert res_v.metrics.levels[1].reviews > 0 and res_v.metrics.levels[2].reviews > 0
    assert res_v.metrics.levels[0].reviewed_by_position and res_v.metrics.levels[3].proposals > 0


def test_oracle_drafts_the_reference_and_only_it():
    target, _ = family(vocab=6, seed=3, eos=None)
    prompt = [1, 2, 3]
    ref = _plain(target, prompt, 30)
    oracle = Oracle()
    oracle.set_reference(prompt, ref)
    assert oracle.propose(prompt + ref[:5], 4) == ref[5:9]
    assert oracle.propose(prompt + ref[:28], 10) == ref[28:]
    assert oracle.propose(prompt + [(ref[0] + 1) % 6], 4) == []  # off the reference: nothing to offer
    res = Cascade(target, [oracle], CascadeConfig.make([[8]])).generate(prompt, 30)
    assert res.tokens == ref
    lv = res.metrics.levels
    assert lv[1].accepted == lv[1].drafted > 0  # every oracle token accepted
    assert lv[0].forward_passes == 4  # 30 tokens, 8 + 1 per pass -> ceil(30 / 9)
    assert res.metrics.standardized_walltime_improvement() == pytest.approx(30 / 4)


def test_review_passes_reconstructs_acceptance():
    prompt_len = 3
    full = [7, 7, 7, 1, 2, 3, 4, 5]  # prompt + output
    passes = [
        (0, [7, 7, 7]),  # prefill, no draft
        (3, [1, 2, 9, 9]),  # own token 1, draft [2, 9, 9]: 1 accepted
        (5, [3, 4, 5, 6, 6]),  # own token 3, draft [4, 5, 6, 6] -> only the positions up to the end count
    ]
    assert review_passes(passes, full, prompt_len) == [(0, 0), (3, 1), (2, 2)]
    # transformers' first pass carries the prompt and a draft starting right after it
    assert review_passes([(0, [7, 7, 7, 1, 2, 0])], full, prompt_len) == [(3, 2)]


# ------------------------------------------------------------------------------------------------ runner


def _prompts(n_cal=1, n_eval=2, datasets=("humaneval", "mmlu"), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for ds in datasets:
        for phase, n in ((CALIBRATION, n_cal), (EVAL, n_eval)):
            for i in range(n):
                out.append(PromptIds(phase, ds, f"{ds}/{phase}/{i}", tuple(int(x) for x in rng.integers(1, 6, 7))))
    return out


def _executor(seed=0):
    target, (d1, _) = family(vocab=6, seed=seed, eos=None)
    return EngineExecutor(target, {D: d1})


class Flaky:
    """Delegates to an executor; raises (like a crash) on the `fail_at`-th run, optionally sleeps."""

    family = ENGINE

    def __init__(self, inner, fail_at=None, sleep=0.0):
        self.inner, self.fail_at, self.sleep, self.calls = inner, fail_at, sleep, 0

    def run(self, *a, **kw):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        time.sleep(self.sleep)
        return self.inner.run(*a, **kw)

    def warmup(self):
        self.inner.warmup()

    def close(self):
        pass


def _setup(tmp_path, n_eval=2):
    methods = build_methods(SPEC, grids=GRIDS)
    prompts = _prompts(n_eval=n_eval)
    units = plan(methods, prompts)
    return methods, {(p.phase, p.dataset, p.id): p for p in prompts}, units


def _run(tmp_path, executor, methods, prompts, units):
    store = RecordStore(tmp_path / "records.jsonl")
    pool = ExecutorPool({ENGINE: lambda: executor}, log=lambda m: None)
    return execute(units, methods, prompts, store, pool, max_new_tokens=12, progress=False, warn=lambda m: None)


def _lines(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def test_plan_order_and_calibration_units():
    methods = build_methods(SPEC, grids=GRIDS, peers=("llama-pld", "hf-pld"))
    units = plan(methods, _prompts(n_eval=3), hf_limit=1)
    cal = [u for u in units if u.phase == CALIBRATION]
    ev = [u for u in units if u.phase == EVAL]
    assert units == cal + ev
    first = [u.variant for u in cal if u.prompt_id == "humaneval/calibration/0"]
    assert first[:2] == ["plain", "llama-plain"]  # baselines of tunable methods run first
    assert "sd:qwen2.5-coder-0.5b:Q4_K_M@k=3" in first and "oracle@k=8" in first and "llama-pld@k=10" in first
    assert sum(u.method == "hf-pld" for u in ev) == 2  # hf_limit=1 per dataset
    assert sum(u.method == "csd" for u in ev) == 6
    assert len({u.key for u in units}) == len(units)


def test_every_other_prompt_runs_its_methods_in_the_swapped_order():
    """Counterbalancing: on every other eval prompt the methods compared with a baseline run before it (in
    reverse), the oracle (which drafts the baseline's output) still after it; calibration keeps list order."""
    methods = build_methods(SPEC, grids=GRIDS, peers=("llama-pld",))
    names = [m.name for m in methods]
    units = plan(methods, _prompts(n_eval=3))
    ev = [u for u in units if u.phase == EVAL and u.dataset == "humaneval"]
    order = [[u.method for u in ev if u.prompt_id == f"humaneval/eval/{i}"] for i in range(3)]
    assert order[0] == order[2] == names
    engine = [n for n in names if n not in ("plain", "oracle") and not n.startswith("llama")]
    assert len(engine) >= 3 and names[0] == "plain"
    assert order[1] == engine[::-1] + ["plain", "oracle", "llama-pld", "llama-plain"]
    assert {u.key for u in units} == {u.key for u in plan(methods, _prompts(n_eval=3), alternate=False)}
    fixed = [u for u in plan(methods, _prompts(n_eval=3), alternate=False) if u.phase == EVAL and u.dataset == "humaneval"]
    assert [u.method for u in fixed if u.prompt_id == "humaneval/eval/1"] == names
    cal = [u for u in units if u.phase == CALIBRATION]
    assert cal == [u for u in plan(methods, _prompts(n_eval=3), alternate=False) if u.phase == CALIBRATION]


class Corrupts:
    """Delegates to an executor; changes the last token `method` generates (a broken engine)."""

    family = ENGINE

    def __init__(self, inner, method):
        self.inner, self.method = inner, method

    def run(self, m, *a, **kw):
        out = self.inner.run(m, *a, **kw)
        if m.name == self.method:
            out.tokens[-1] = (out.tokens[-1] + 1) % 6
        return out

    def examine(self, *a, **kw):
        return self.inner.examine(*a, **kw)

    def warmup(self):
        self.inner.warmup()

    def close(self):
        pass


def test_a_method_that_ran_before_its_baseline_is_judged_once_the_baseline_ran(tmp_path):
    methods, prompts, units = _setup(tmp_path)
    assert _run(tmp_path, _executor(), methods, prompts, units) == len(units)
    recs = _lines(tmp_path / "records.jsonl")
    first = [r for r in recs if r["phase"] == EVAL and r.get("ran_before_baseline")]
    assert {r["prompt_id"] for r in first} == {"humaneval/eval/1", "mmlu/eval/1"}
    assert all(r["exactness"] == "identical" and r["matches_baseline"] for r in first)
    assert not any(r.get("ran_before_baseline") for r in recs if r["prompt_id"].endswith("/0"))
    keys = [r["key"] for r in recs]
    for r in first:  # stored once its baseline was
        assert keys.index(r["key"]) > keys.index(f"eval|{r['dataset']}|{r['prompt_id']}|plain")
    # a broken method is caught whichever ran first
    bad_dir = tmp_path / "bad"
    assert _run(bad_dir, Corrupts(_executor(), "csd"), methods, prompts, units) == len(units)
    bad = [r for r in _lines(bad_dir / "records.jsonl") if r["method"] == "csd" and r["phase"] == EVAL]
    assert {bool(r["ran_before_baseline"]) for r in bad} == {True, False}
    assert all(r["exactness"] in ("mismatch", "tie") and r["matches_baseline"] is False for r in bad)


def test_a_crash_before_the_baseline_runs_loses_the_units_that_waited_for_it(tmp_path):
    methods, prompts, units = _setup(tmp_path)
    k = next(i for i, u in enumerate(units) if u.phase == EVAL and u.prompt_id == "humaneval/eval/1" and u.method == "plain")
    waiting = [u.key for u in units[:k] if u.prompt_id == "humaneval/eval/1"]
    assert waiting  # they ran before plain
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, Flaky(_executor(), fail_at=k + 1), methods, prompts, units)
    stored = {r["key"] for r in _lines(tmp_path / "records.jsonl")}
    assert stored == {u.key for u in units[:k]} - set(waiting)
    again = Flaky(_executor())
    assert _run(tmp_path, again, methods, prompts, units) == len(units) - len(stored) == again.calls
    recs = _lines(tmp_path / "records.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(u.key for u in units)
    assert all(r["matches_baseline"] for r in recs if r["method"] != r["baseline"])


def test_full_run_records_every_unit_once_and_exactly(tmp_path):
    methods, prompts, units = _setup(tmp_path)
    assert _run(tmp_path, _executor(), methods, prompts, units) == len(units)
    recs = _lines(tmp_path / "records.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(u.key for u in units)
    assert all(r["matches_baseline"] is not False for r in recs)
    assert all(r["matches_baseline"] for r in recs if r["method"] != r["baseline"])
    choices = choose_lengths(methods, recs)
    assert set(choices) == {(ds, m) for ds in ("humaneval", "mmlu") for m in ("sd:qwen2.5-coder-0.5b:Q4_K_M", "maxgram", "oracle")}
    for r in recs:
        if r["phase"] == EVAL and r["method"] == "sd:qwen2.5-coder-0.5b:Q4_K_M":
            assert r["params"]["draft_length"] == choices[(r["dataset"], r["method"])]["length"]
    # a second run finds nothing to do
    assert _run(tmp_path, _executor(), methods, prompts, units) == 0


def test_resume_after_a_crash_mid_run(tmp_path):
    methods, prompts, units = _setup(tmp_path)
    flaky = Flaky(_executor(), fail_at=len(units) // 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, flaky, methods, prompts, units)
    before = _lines(tmp_path / "records.jsonl")
    assert len(before) == len(units) // 2 - 1
    again = Flaky(_executor())
    assert _run(tmp_path, again, methods, prompts, units) == len(units) - len(before)
    assert again.calls == len(units) - len(before)  # nothing recorded was run again
    recs = _lines(tmp_path / "records.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(u.key for u in units)


def test_store_drops_a_line_cut_short_and_duplicates(tmp_path):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path)
    store.append({"key": "a", "x": 1})
    store.append({"key": "b", "x": 2})
    with pytest.raises(CSDraftingError, match="already exists"):
        store.append({"key": "a", "x": 3})
    with open(path, "a") as f:
        f.write(json.dumps({"key": "a", "x": 9}) + "\n")  # a duplicate (never written by us, but repaired)
        f.write('{"key": "c", "x"')  # killed mid-write
    store = RecordStore(path)
    assert store.repaired == 2 and len(store) == 2 and store.get("a")["x"] == 1
    assert path.read_text().endswith("\n") and len(_lines(path)) == 2
    store.append({"key": "c", "x": 3})
    assert [r["key"] for r in _lines(path)] == ["a", "b", "c"]


CHILD = """
import sys
sys.path.insert(0, {tests!r})
import test_bench as tb
from pathlib import Path
out = Path({out!r})
methods, prompts, units = tb._setup(out)
tb._run(out, tb.Flaky(tb._executor(), sleep=0.15), methods, prompts, units)
"""


def test_resume_after_the_process_is_killed(tmp_path):
    methods, prompts, units = _setup(tmp_path)
    code = CHILD.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = tmp_path / "records.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and len(path.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_before = len(RecordStore(path))
    assert 5 <= n_before < len(units)
    with open(path, "a") as f:
        f.write('{"key": "eval|mmlu|')  # as if the kill had hit in the middle of a write
    again = Flaky(_executor())
    assert _run(tmp_path, again, methods, prompts, units) == len(units) - n_before
    keys = [r["key"] for r in _lines(path)]
    assert len(keys) == len(set(keys)) == len(units)


# ------------------------------------------------------------------------------------------------ summary


def _level(level, name, kind, n_params, passes, drafted=0, accepted=0, rev=(), acc=()):
    return {"level": level, "name": name, "kind": kind, "n_params": n_params, "forward_passes": passes,
            "tokens_evaluated": 0, "seconds": 0.0, "proposals": 0, "reviews": len(rev),
            "reviewed_by_position": list(rev), "accepted_by_position": list(acc), "drafted": drafted,
            "accepted": accepted}


def _rec(ds, pid, method, tps, tokens, levels, baseline="plain", family_="engine", phase=EVAL, params=None, new=10):
    cost = sum(lv["forward_passes"] * lv["n_params"] for lv in levels)
    return {"key": f"{phase}|{ds}|{pid}|{method}", "phase": phase, "dataset": ds, "prompt_id": pid, "method": method,
            "family": family_, "baseline": baseline, "params": params or {}, "tokens": tokens, "new_tokens": new,
            "seconds": new / tps, "tokens_per_second": tps,
            "metrics": {"levels": levels, "standardized_cost": cost, "new_tokens": new}}


def _synthetic():
    out = []
    plain_tps, csd_tps = [10.0, 20.0, 30.0], [15.0, 20.0, 90.0]
    csd_passes = [5, 4, 1]
    for i in range(3):
        toks = [i, 1, 2]
        out.append(_rec("humaneval", f"p{i}", "plain", plain_tps[i], toks, [_level(0, "T", "target", 100, 10)]))
        out.append(_rec("humaneval", f"p{i}", "csd", csd_tps[i], toks if i < 2 else [9, 9, 9], [
            _level(0, "T", "target", 100, csd_passes[i], rev=(2, 2), acc=(2, 1)),
            _level(1, "D", "drafter", 10, 6, drafted=8, accepted=6, rev=(3,), acc=(2,)),
            _level(2, "Max-Gram", "statistical", 0, 0, drafted=4, accepted=1),
        ]))
        sd = _rec("humaneval", f"p{i}", "sd:d", 1.2 * plain_tps[i], toks if i != 1 else [1, 1, 7], [
            _level(0, "T", "target", 100, 5), _level(1, "D", "drafter", 10, 20, drafted=20, accepted=5)])
        if i == 1:
            sd["exactness"] = "tie"  # examined by the runner: a numerical tie
        out.append(sd)
        out.append(_rec("humaneval", f"p{i}", "llama-plain", 10.0, toks, [_level(0, "T", "target", 100, 10)],
                        baseline="llama-plain", family_="llama"))
        out.append(_rec("humaneval", f"p{i}", "llama-pld", 11.0, toks if i else [5, 5, 5], [
            _level(0, "T", "target", 100, 8), _level(1, "PLD", "statistical", 0, 0, drafted=4, accepted=2)],
            baseline="llama-plain", family_="llama"))
    # a calibration record must not count
    out.append(_rec("humaneval", "c0", "csd", 1000.0, [0], [_level(0, "T", "target", 100, 1)], phase=CALIBRATION))
    return out


def test_summary_math_on_synthetic_records(tmp_path):
    rows = {(r.dataset, r.method): r for r in aggregate(_synthetic())}
    csd = rows[("humaneval", "csd")]
    assert csd.n == 3
    assert csd.tps_median == 20.0
    assert csd.speedup_median == pytest.approx(1.5)  # median of 1.5, 1.0, 3.0 (the ratio of medians is 1.0)
    assert csd.tokens_per_pass == pytest.approx(30 / 10)
    assert csd.swi == pytest.approx(3 * 10 * 100 / (3 * 0 + (5 + 4 + 1) * 100 + 3 * 6 * 10))
    assert [(name, a, d) for name, a, d in csd.level_acceptance] == [("D", 18 / 24, 24), ("Max-Gram", 3 / 12, 12)]
    assert csd.by_position[0] == [(6, 6), (6, 3)] and csd.by_position[1] == [(9, 6)]
    assert (csd.exact_matches, csd.exact_compared, csd.ties, csd.mismatches) == (2, 3, 0, 1)  # unexamined: mismatch
    sd = rows[("humaneval", "sd:d")]
    assert (sd.exact_matches, sd.ties, sd.mismatches) == (2, 1, 0)
    plain = rows[("humaneval", "plain")]
    assert plain.speedup_median == 1.0 and plain.swi == pytest.approx(1.0) and plain.exact_compared == 0
    pld = rows[("humaneval", "llama-pld")]
    assert pld.speedup_median == pytest.approx(1.1) and pld.tokens_per_pass == pytest.approx(10 / 8)
    assert (pld.exact_matches, pld.exact_compared, pld.divergent, pld.mismatches) == (2, 3, 1, 0)  # a peer: counted
    assert (pld.vs_plain_matches, pld.vs_plain_compared) == (2, 3)
    assert rows[("all", "csd")].n == 3
    assert [r.method for r in exactness_failures(list(rows.values()))] == ["csd"]
    head = headline_lines(list(rows.values()), _synthetic())
    assert len(head) == 1 and "fastest: **csd**, 1.50x over plain (worst prompt 1.00x, 3 prompts)" in head[0]
    # csd / sd per prompt: 15/12, 20/24, 90/36; csd / llama-pld (the faster peer): 15/11, 20/11, 90/11
    assert "best cascade **csd** over best single-level speculative decoding **sd:d**: 1.25x" in head[0]
    assert "fastest other program **llama-pld**: 1.82x" in head[0]
    md = render_markdown(list(rows.values()), {"suite": "test"}, records=_synthetic())
    assert "## Headline" in md
    assert "EXACTNESS MISMATCHES" in md and "| csd |" in md and "| 2 / 0 / 1 ⚠️ |" in md
    assert "| 2 / 1 / 0 |" in md and "| 2 / 0 / 0 + 1 div |" in md
    path, _ = write_summary(_synthetic(), tmp_path, {"suite": "test"})
    assert path.exists()
    for png in ("speedup.png", "acceptance_by_position.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_choose_lengths_takes_the_best_aggregate_rate():
    methods = build_methods(SPEC, methods=("sd",), grids={"sd": (2, 4)})
    recs = []
    for pid, (s2, s4) in enumerate([(1.0, 2.0), (4.0, 2.0)]):  # k=2: 20 tokens in 5 s; k=4: 20 in 4 s
        for k, s in ((2, s2), (4, s4)):
            recs.append({"phase": CALIBRATION, "dataset": "mmlu", "prompt_id": str(pid), "method": "sd:qwen2.5-coder-0.5b:Q4_K_M",
                         "params": {"draft_length": k}, "new_tokens": 10, "seconds": s})
    c = choose_lengths(methods, recs)[("mmlu", "sd:qwen2.5-coder-0.5b:Q4_K_M")]
    assert c["length"] == 4 and c["tokens_per_second"] == {2: 4.0, 4: 5.0} and c["prompts"] == 2


def test_settings_change_is_refused(tmp_path):
    from csdrafting.bench.cli import _check_settings

    s = {"spec": SPEC.to_json(), "max_new_tokens": 64, "timing": "e2e", "hf_target": None, "hf_assistant": None,
         "methods": [m.to_json() for m in build_methods(SPEC)]}
    _check_settings(tmp_path, s)
    _check_settings(tmp_path, s)  # same settings: fine
    with pytest.raises(CSDraftingError, match="max_new_tokens"):
        _check_settings(tmp_path, {**s, "max_new_tokens": 128})
    # a run from before every record held both timings is not resumed into a mix
    with pytest.raises(CSDraftingError, match="timings"):
        _check_settings(tmp_path, {**s, "timings": ["decode", "e2e"]})


def test_run_json_from_before_the_renames_resumes(tmp_path):
    """A run.json written before bottom_length and per-drafter settings describes the same run."""
    import json

    from csdrafting.bench.cli import _check_settings
    from csdrafting.bench.methods import Method

    suffix_spec = CascadeSpec(target=T, drafters=[D, "suffix"], k=[[3, 6], [0, 4]],
                              drafter_settings={"suffix": {"persist": True}})
    other = CascadeSpec(target=T, drafters=["suffix"], k=[[8]], dynamic=True)
    methods = build_methods(suffix_spec, also=[("other", other)])
    s = {"spec": suffix_spec.to_json(), "max_new_tokens": 64, "timing": "e2e", "hf_target": None,
         "hf_assistant": None, "methods": [m.to_json() for m in methods]}
    flat = {"bigram": "default", "suffix_calibration": "default", "suffix_max_ngram": 12, "suffix_min_count": 1,
            "suffix_persist": False}
    old_spec = {k: v for k, v in s["spec"].items() if k not in ("bottom_length", "drafter_settings")}
    old_spec.update(flat, suffix_persist=True, maxgram_length=None)
    old_methods = []
    for m in s["methods"]:
        m = {("maxgram_length" if k == "bottom_length" else k): v for k, v in m.items()}
        if m["name"] == "cfg:other":
            m["params"] = {"statistical": flat}
        old_methods.append(m)
    (tmp_path / "run.json").write_text(json.dumps({"settings": {**s, "spec": old_spec, "methods": old_methods}}))
    _check_settings(tmp_path, s)  # the same run, in today's spelling: resumed, not refused
    again = [Method.from_json(m) for m in old_methods]
    assert again == methods and [m.params for m in again] == [m.params for m in methods]
    with pytest.raises(CSDraftingError, match="spec"):
        _check_settings(tmp_path, {**s, "spec": {**s["spec"], "drafter_settings": {"suffix": {"persist": False}}}})


class _FakeTokenizer:
    """transformers-style: encode(text, add_special_tokens) and apply_chat_template(tokenize=False)."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 97 for c in text[:20]]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "<user>" + messages[0]["content"] + "<assistant>"


class _FakeModel:
    def __init__(self):
        from csdrafting.protocol import ModelInfo

        self.tokenizer = _FakeTokenizer()
        self.info = ModelInfo("fake", 97, 1, frozenset([3, 5]))


def test_prompt_ids_are_cached_for_resume(tmp_path):
    from csdrafting.bench.cli import prepare_prompts

    calls = []

    def model():
        calls.append(1)
        return _FakeModel()

    first, eos = prepare_prompts(tmp_path, ["humaneval", "mmlu"], limit=2, cal=1, tokenizer_model=model)
    assert len(calls) == 1 and eos == [3, 5]
    assert [(p.phase, p.dataset) for p in first] == [(CALIBRATION, "humaneval"), (CALIBRATION, "mmlu")] + [
        (EVAL, "humaneval")] * 2 + [(EVAL, "mmlu")] * 2
    mmlu = [p for p in first if p.dataset == "mmlu"][0]
    assert mmlu.ids[:16] == tuple(_FakeTokenizer().encode("<user>Question: "))  # chat-formatted

    def no_model():
        raise AssertionError("everything is cached: the target must not be loaded")

    again, eos2 = prepare_prompts(tmp_path, ["humaneval", "mmlu"], limit=2, cal=1, tokenizer_model=no_model)
    assert again == first and eos2 == eos
    more, _ = prepare_prompts(tmp_path, ["humaneval", "mmlu"], limit=3, cal=1, tokenizer_model=model)
    assert len(calls) == 2 and len(more) == 8 and more[:4] == first[:4]


# ------------------------------------------------------------------------------------------------ real models


@pytest.mark.real
def test_bench_cli_end_to_end_on_the_small_model(tmp_path, capsys):
    """Every engine method and llama.cpp's prompt lookup on one HumanEval prompt, 6 tokens, with the 0.5B
    as target and drafter (the point is the plumbing, not the speed); then a rerun finds nothing to do."""
    pytest.importorskip("llama_cpp")
    from csdrafting import store
    from csdrafting.bench.cli import main

    small = "qwen2.5-coder-0.5b:Q4_K_M"
    if not store.model_path("qwen2.5-coder-0.5b", "Q4_K_M").is_file():
        pytest.skip("the 0.5B GGUF is not in the model store (csdrafting models install)")
    argv = ["quick", "--out", str(tmp_path), "--datasets", "humaneval", "--limit", "1", "--max-new-tokens", "6",
            "--target", small, "--drafter", small, "--drafter", "maxgram", "--k", "[[3,6],[0,4]]", "--no-progress"]
    assert main(argv) == 0
    recs = _lines(tmp_path / "records.jsonl")
    assert sorted(r["method"] for r in recs) == sorted(
        ["plain", "sd:qwen2.5-coder-0.5b:Q4_K_M", "maxgram", "vertical", "horizontal", "csd", "oracle", "llama-plain", "llama-pld"])
    assert all(r["matches_baseline"] for r in recs if r["method"] != r["baseline"])
    plain = next(r for r in recs if r["method"] == "plain")
    assert all(r["tokens"] == plain["tokens"] for r in recs)  # llama.cpp's own decoding agrees too
    summary = (tmp_path / "summary.md").read_text()
    # each row's configuration as it ran: levels and K (humaneval and all)
    assert summary.count("| csd | levels: target > qwen2.5-coder-0.5b:Q4_K_M > maxgram; K=[[3,6],[0,4]] | 1 |") == 2
    assert summary.count("| vertical | levels: target > qwen2.5-coder-0.5b:Q4_K_M > maxgram; K=[[3,3],[0,4]] | 1 |") == 2
    assert (tmp_path / "speedup.png").exists() and (tmp_path / "acceptance_by_position.png").exists()
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 to go" in capsys.readouterr().err
    assert len(_lines(tmp_path / "records.jsonl")) == len(recs)
    # a second round of every method on the same prompt, added to the finished run; the summary folds it
    assert main(argv + ["--repeats", "2"]) == 0
    assert f"{len(recs)} already recorded, {len(recs)} to go" in capsys.readouterr().err
    again = _lines(tmp_path / "records.jsonl")
    assert sorted(r["repeat"] for r in again) == [0] * len(recs) + [1] * len(recs)
    assert all(r["matches_baseline"] for r in again if r["method"] != r["baseline"])
    assert "with 2 interleaved repetitions show their median timings" in (tmp_path / "summary.md").read_text()
    # the second round ran in the swapped order: each method compared with a baseline (not the oracle) before it
    assert sum(bool(r.get("ran_before_baseline")) for r in again) == 6
    assert "6 of 14 eval runs compared with a baseline ran before it" in (tmp_path / "summary.md").read_text()


def test_side_by_side_with_llama_cpp_programs():
    from csdrafting.bench.summary import paired_ratio, peer_lines

    recs = []
    for i, (plain, bin_plain, mapk, mod) in enumerate([(5.0, 10.0, 12.0, 9.0), (6.0, 12.0, 24.0, 12.0), (4.0, 8.0, 8.0, 16.0)]):
        recs.append(_rec("humaneval", f"p{i}", "plain", plain, [1], [_level(0, "T", "target", 100, 10)]))
        for name, tps in (("llama-cpp-plain", bin_plain), ("llama-cpp-ngram-map-k", mapk), ("llama-cpp-ngram-mod", mod)):
            recs.append(_rec("humaneval", f"p{i}", name, tps, [1], [_level(0, "T", "target", 0, 10)],
                             baseline="llama-cpp-plain", family_="llamacpp-bin"))
    assert paired_ratio(recs, "humaneval", "llama-cpp-ngram-map-k", "llama-cpp-plain") == (pytest.approx(1.2), 3)
    assert paired_ratio(recs, "humaneval", "plain", "llama-cpp-plain") == (pytest.approx(0.5), 3)
    rows = aggregate(recs)
    lines = peer_lines(rows, recs)
    # best n-gram mode by median tok/s: map-k (12) over mod (12 too, tie broken by order) -> either is stated
    assert lines[0] == "### humaneval"
    table = "\n".join(lines)
    assert "| plain | 5.00 | 0.50x |" in table and "| llama-cpp-ngram-map-k | 12.00 | 1.20x |" in table
    assert "EXACTNESS" not in render_markdown(rows, {"suite": "t"}, records=recs)
    assert "Beside llama.cpp's own programs" in render_markdown(rows, {"suite": "t"}, records=recs)


def test_also_configs_and_the_suffix_drafter_run_as_bench_rows(tmp_path):
    """--also adds a cascade config as its own row; a dynamic row gets cost curves from the bench's spec
    (measured when the spec has none), and the suffix drafter is built with the spec's settings."""
    from csdrafting.bench.executors import EngineExecutor
    from csdrafting.bench.methods import build_methods
    from csdrafting.spec import CascadeSpec

    paths = {n: tmp_path / f"{n}.gguf" for n in ("T", "D")}
    for p in paths.values():
        p.write_bytes(b"")
    spec = CascadeSpec(target=str(paths["T"]), drafters=["suffix"], k=[[6]], dynamic=True,
                       drafter_settings={"suffix": {"calibration": None, "persist": True}})
    other = CascadeSpec(target=str(paths["T"]), drafters=[str(paths["D"]), "suffix"], k=[[4, 8], [0, 0]], dynamic=True,
                        drafter_settings={"suffix": {"calibration": None, "persist": False}})
    methods = build_methods(spec, ["plain", "csd", "vertical", "sd"], also=[("dyn-horizontal", other)], calibrate=False)
    names = [m.name for m in methods]
    assert names[:2] == ["plain", "csd"] and "cfg:dyn-horizontal" in names and "vertical" not in names  # no neural drafter
    assert not any(n.startswith("sd:") for n in names)  # the suffix drafter is no sd drafter
    target, (d1, _) = family(vocab=6, seed=0, eos=None)
    ex = EngineExecutor(target, {str(paths["D"]): d1}, spec_config=spec.cascade_config(), spec=spec)
    prompt = [1, 2, 3, 1, 2, 3, 1]
    want = _plain(target, prompt, 20)
    for m in methods:
        params = m.resolve()
        out = ex.run(m, params, prompt, 20, want)
        assert out.tokens == want, m.name
    also_row = next(m for m in methods if m.name == "cfg:dyn-horizontal")
    cfg = ex.cascade(also_row.resolve(), also_row.name).config
    assert cfg.dynamic and len(cfg.costs) == 3 and cfg.costs[2] is None and cfg.costs[0] is not None
    # the --also row's own suffix settings (no store); the spec's csd row keeps its store across runs, its own
    assert ex.cascade(also_row.resolve(), also_row.name).drafters[1].store is None
    csd = next(m for m in methods if m.name == "csd")
    d1_, d2_ = (ex.cascade(csd.resolve(), csd.name).drafters[0] for _ in range(2))
    assert d1_ is d2_ and d1_.store is not None and len(d1_.store.text) > 0  # it stored the csd run's output
    assert ex.cascade(csd.resolve(), "another method").drafters[0] is not d1_
    # where texts end is learned per method too: a method of the same shape does not plan with csd's text
    learned = ex.cascade(csd.resolve(), csd.name).ends
    assert learned is not None and learned.counts  # csd's runs were counted
    assert ex.cascade(csd.resolve(), csd.name).ends is learned
    assert not ex.cascade(csd.resolve(), "another method").ends.counts
    with pytest.raises(CSDraftingError, match="not the bench's target"):
        build_methods(spec, ["plain"], also=[("x", CascadeSpec(target=str(paths["D"])))])


# ------------------------------------------------------------------------------------------------ conversations,
# both timings, the per-workload headline


SEP = [4, 5, 1]  # what a tiny "chat template" puts between an answer and the next user turn


def _render(prompt, answers):
    """Turn k+1 as a chat template makes it: the first turn's ids, each answer, a separator."""
    out = list(prompt.ids)
    for a in answers:
        out += list(a) + SEP
    return out


def _conversations(n_eval=2, n_cal=0, ds="specbench-mt_bench"):
    rng = np.random.default_rng(7)
    out = []
    for phase, n in ((CALIBRATION, n_cal), (EVAL, n_eval)):
        for i in range(n):
            out.append(PromptIds(phase, ds, f"{ds}/{phase}/{i}", tuple(int(x) for x in rng.integers(1, 6, 9)),
                                 "writing", "mt_bench", ("first question", "second question")))
    return out


def _run_conv(tmp_path, executor, methods, prompts, timing="decode"):
    units = plan(methods, prompts)
    store = RecordStore(tmp_path / "records.jsonl")
    pool = ExecutorPool({ENGINE: lambda: executor}, log=lambda m: None)
    n = execute(units, methods, {(p.phase, p.dataset, p.id): p for p in prompts}, store, pool, max_new_tokens=12,
                timing=timing, progress=False, warn=lambda m: None, render=_render)
    return n, units


CONV_SPEC = CascadeSpec(target=T, drafters=[D, "suffix"], k=[[3, 6], [0, 4]],
                        drafter_settings={"suffix": {"calibration": None}})


def test_a_conversation_keeps_its_cache_and_answers_as_a_cold_run_would(tmp_path):
    """Turn 2 runs on the same Cascade with keep_cache: the target evaluates fewer tokens than a cold run
    of the same turn-2 prompt, and the tokens are the cold run's."""
    methods = build_methods(CONV_SPEC, methods=("csd", "oracle"), calibrate=False)
    ex = _executor()
    ex.spec = CONV_SPEC
    prompts = _conversations()
    n, units = _run_conv(tmp_path, ex, methods, prompts)
    assert n == len(units) == 3 * 2
    recs = {r["key"]: r for r in _lines(tmp_path / "records.jsonl")}
    for r in recs.values():
        t1, t2 = r["turns"]
        prompt = next(p for p in prompts if p.id == r["prompt_id"])
        turn2 = _render(prompt, [t1["tokens"]])
        assert t2["prompt_tokens"] == len(turn2) and r["prompt_tokens"] == len(prompt.ids)
        assert r["tokens"] == t1["tokens"] + t2["tokens"] and r["new_tokens"] == 24
        cold = ex.run(next(m for m in methods if m.name == r["method"]), r["params"], turn2, 12,
                      recs[f"eval|{r['dataset']}|{r['prompt_id']}|plain"]["turns"][1]["tokens"])
        assert t2["tokens"] == cold.tokens
        assert t2["target_tokens_evaluated"] < cold.metrics.levels[0].tokens_evaluated
        # the kept cache held turn 1's prompt and answer (but the answer's last token, never fed back): the
        # target skips exactly those, and does the same decoding work as the cold run
        saved = len(prompt.ids) + len(t1["tokens"]) - 1
        assert cold.metrics.levels[0].tokens_evaluated - t2["target_tokens_evaluated"] == saved
        if r["method"] != "plain":
            assert r["exactness"] == "identical" and [t["exactness"] for t in r["turns"]] == ["identical"] * 2
        # totals are the turns' sums (Spec-Bench's speed.py): tokens/s = all tokens / all seconds
        assert r["e2e_seconds"] == pytest.approx(t1["e2e_seconds"] + t2["e2e_seconds"])
        assert r["decode_tokens_per_second"] == pytest.approx(24 / (t1["decode_seconds"] + t2["decode_seconds"]))
    oracle = next(r for r in recs.values() if r["method"] == "oracle")
    assert oracle["metrics"]["levels"][1]["accepted"] == oracle["metrics"]["levels"][1]["drafted"] > 12


def test_both_timings_are_recorded_and_timing_picks_the_headline(tmp_path):
    methods = build_methods(SPEC, methods=("csd",), calibrate=False)
    for timing in ("decode", "e2e"):
        out = tmp_path / timing
        _run_conv(out, _executor(), methods, _prompts(n_cal=0, n_eval=1, datasets=("mmlu",)), timing=timing)
        for r in _lines(out / "records.jsonl"):
            assert "turns" not in r and r["timing"] == timing  # a single turn keeps the old record shape
            assert r["e2e_seconds"] == pytest.approx(r["prefill_seconds"] + r["decode_seconds"])
            assert r["prefill_seconds"] > 0 and r["decode_seconds"] > 0
            assert r["e2e_tokens_per_second"] == pytest.approx(r["new_tokens"] / r["e2e_seconds"])
            assert r["decode_tokens_per_second"] == pytest.approx(r["new_tokens"] / r["decode_seconds"])
            assert r["tokens_per_second"] == r[f"{timing}_tokens_per_second"]
            assert r["seconds"] == r["e2e_seconds" if timing == "e2e" else "decode_seconds"]
            curve = r["target_cost_curve"]  # measured once at warmup, kept with every engine record
            assert curve["ns"][0] == 1 and len(curve["seconds"]) == len(curve["ns"]) and "measured" in curve["source"]


class Stalls:
    """An engine executor whose conversations stall (or crash) in turn 2 of one chosen prompt."""

    family = ENGINE

    def __init__(self, inner, prompt_id, marker=None, crash=False):
        self.inner, self.prompt_id, self.marker, self.crash = inner, prompt_id, marker, crash
        self.turns = 0

    def conversation(self, method, params):
        inner, outer = self.inner.conversation(method, params), self

        class Turns:
            def turn(self, prompt, max_new, reference):
                outer.turns += 1
                if inner.turns == 1 and tuple(prompt[:9]) == outer.target_ids:
                    if outer.crash:
                        raise RuntimeError("simulated crash in turn 2")
                    Path(outer.marker).write_text("in turn 2")
                    time.sleep(60)
                return inner.turn(prompt, max_new, reference)

        return Turns()

    def examine(self, *a):
        return self.inner.examine(*a)

    def warmup(self):
        self.inner.warmup()

    def close(self):
        pass


CONV_CHILD = """
import sys
sys.path.insert(0, {tests!r})
import test_bench as tb
from pathlib import Path
out = Path({out!r})
methods = tb.build_methods(tb.SPEC, methods=("csd",), calibrate=False)
prompts = tb._conversations(n_eval=3)
ex = tb.Stalls(tb._executor(), prompts[1].id, marker={marker!r})
ex.target_ids = prompts[1].ids
tb._run_conv(out, ex, methods, prompts)
"""


def test_resume_after_a_kill_in_the_middle_of_a_conversation(tmp_path):
    """Killed in turn 2: the conversation in flight leaves no record, the resume runs it from its first
    turn, and every unit ends with exactly one record."""
    marker = tmp_path / "in-turn-2"
    code = CONV_CHILD.format(tests=str(Path(__file__).parent), out=str(tmp_path), marker=str(marker))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    methods = build_methods(SPEC, methods=("csd",), calibrate=False)
    prompts = _conversations(n_eval=3)
    before = _lines(tmp_path / "records.jsonl")
    # plain and csd of the first prompt; plain's turn 2 of the second was in flight
    assert [(r["prompt_id"], r["method"]) for r in before] == [(prompts[0].id, "plain"), (prompts[0].id, "csd")]
    again = Stalls(_executor(), None)
    again.target_ids = ()
    n, units = _run_conv(tmp_path, again, methods, prompts)
    assert n == len(units) - 2 and again.turns == 2 * n  # the interrupted conversation ran both turns again
    recs = _lines(tmp_path / "records.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(u.key for u in units)
    assert all(len(r["turns"]) == 2 and r["exactness"] in (None, "identical") for r in recs)
    # a crash (not a kill) in turn 2 likewise records nothing for that conversation
    crash = Stalls(_executor(), None, crash=True)
    crash.target_ids = prompts[0].ids
    with pytest.raises(RuntimeError, match="turn 2"):
        _run_conv(tmp_path / "crash", crash, methods, prompts)
    assert not (tmp_path / "crash" / "records.jsonl").exists()


def _timed(ds, pid, method, decode, e2e, tokens=(1, 2), group="", **kw):
    r = _rec(ds, pid, method, decode, list(tokens), [_level(0, "T", "target", 100, 10)], **kw)
    r.update(group=group, timing="decode", decode_tokens_per_second=decode, e2e_tokens_per_second=e2e)
    return r


CURVE = {"ns": [1, 2, 4], "seconds": [0.1, 0.15, 0.25], "prefill": [0, 0], "source": "measured at start"}


def _workloads():
    """specbench: p0, p1 in group qa, p2 in rag; plus old-style humaneval records (one timing only)."""
    out = []
    bin_ = dict(baseline="llama-cpp-plain", family_="llamacpp-bin")
    rows = {  # method: (decode rates, e2e rates)
        "plain": ([10, 20, 30], [8, 16, 24]), "csd": ([15, 20, 90], [12, 16, 48]), "oracle": ([20, 40, 60], [16, 32, 48]),
        "llama-cpp-plain": ([12, 12, 12], [10, 10, 10]), "llama-cpp-ngram-mod": ([24, 12, 30], [20, 10, 12]),
        "llama-cpp-ngram-map-k": ([18, 24, 15], [15, 20, 30]),
    }
    for m, (dec, e2e) in rows.items():
        for i, g in enumerate(("qa", "qa", "rag")):
            kw = bin_ if m.startswith("llama-cpp") else {"params": {"draft_length": 32}} if m == "oracle" else {}
            r = _timed("specbench", f"p{i}", m, dec[i], e2e[i], tokens=(9, 9) if (m, i) == ("csd", 1) else (1, 2),
                       group=g, **kw)
            if (m, i) == ("csd", 1):
                r["exactness"] = "tie"
            if r["family"] == "engine":
                r["target_cost_curve"] = CURVE
            out.append(r)
    for m, tps in (("plain", 10.0), ("csd", 14.0)):  # a run from before both timings were recorded
        out.append(_rec("humaneval", "h0", m, tps, [1], [_level(0, "T", "target", 100, 10)]) | {"timing": "e2e"})
    return out


def test_headline_tables_per_workload_and_group_with_paired_medians():
    from csdrafting.bench.headline import headline_tables, sections

    recs = _workloads()
    assert [s.title for s in sections(recs)] == ["specbench", "specbench / qa", "specbench / rag", "humaneval"]
    md = "\n".join(headline_tables(recs, ["plain", "csd", "oracle"]))
    spec = md.split("### specbench\n")[1].split("###")[0]
    # csd decode: 15/10, 20/20, 90/30 over plain; over the per-prompt best n-gram mode 15/24, 20/24, 90/30
    # e2e: 12/8, 16/16, 48/24 over plain; 12/20, 16/20, 48/30 over the best n-gram (mod, map-k, map-k)
    assert ("| csd | 3 | 20.00 | 1.50x (1.00–3.00) | 0.83x (0.62–3.00) | 16.00 | 1.50x (1.00–2.00) "
            "| 0.80x (0.60–1.60) | 2 / 1 / 0 |") in spec
    assert "| oracle (k=32) | 3 | 40.00 | 2.00x (2.00–2.00) |" in spec
    assert "| plain | 3 | 20.00 | 1.00x (1.00–1.00) |" in spec and spec.index("| plain |") < spec.index("| csd |")
    # the best mode per prompt: decode 24, 24, 30 and e2e 20, 20, 30, over llama-cpp-plain's 12 and 10
    assert ("| llama.cpp best n-gram (per prompt) | 3 | 24.00 | 2.00x (2.00–2.50) |  | 20.00 | 2.00x (2.00–3.00) |  | |"
            in spec)
    assert "| llama-cpp-ngram-mod | 3 | 24.00 | 2.00x (1.00–2.50) |  |" in spec
    assert "- csd: 50% of the oracle's decode speedup over plain (1.50x of 2.00x, medians)" in spec
    qa = md.split("### specbench / qa\n")[1].split("###")[0]
    assert "| csd | 2 | 17.50 | 1.25x (1.00–1.50) | 0.73x (0.62–0.83) |" in qa and "| 1 / 1 / 0 |" in qa
    rag = md.split("### specbench / rag\n")[1].split("###")[0]
    assert "| csd | 1 | 90.00 | 3.00x | 3.00x | 48.00 | 2.00x | 1.60x | 1 / 0 / 0 |" in rag
    old = md.split("### humaneval\n")[1]
    assert "| csd | 1 | – | – | – | 14.00 | 1.40x | – | 1 / 0 / 0 |" in old  # only its own (e2e) timing, no peers
    # the target's cost curve beside the result: one curve, used by the 9 engine records
    assert "measured at start; used by 9 record(s):" in md
    assert "| ms | 100.0 | 150.0 | 250.0 |" in md and "| × one token | 1.00 | 1.50 | 2.50 |" in md


def test_order_check_splits_each_methods_ratio_by_whether_it_ran_first():
    from csdrafting.bench.headline import order_lines

    recs = [_timed("qa", f"p{i}", "plain", 10.0, 5.0) for i in range(4)]
    recs += [dict(_timed("qa", f"p{i}", "csd", 12.0 if i % 2 else 11.0, 6.0), ran_before_baseline=bool(i % 2))
             for i in range(4)]
    md = "\n".join(order_lines(recs))
    assert "| csd | 2 | 1.20x (1.20–1.20) | 2 | 1.10x (1.10–1.10) |" in md
    assert order_lines([r for r in recs if not r.get("ran_before_baseline")]) == []  # one order only: nothing to tell
    folded = [dict(r, repeats={"n": 2}) if r["method"] == "csd" else r for r in recs]
    assert order_lines(folded) == []  # medians over rounds that ran in both orders


def test_several_specbench_groups_are_also_pooled(tmp_path):
    from csdrafting.bench.headline import sections

    recs = [_timed(f"specbench-{g}", f"{g}{i}", "plain", 10, 8, group=g) for g in ("qa", "rag") for i in range(2)]
    assert [(s.title, len(s.records)) for s in sections(recs)] == [
        ("specbench-qa", 2), ("specbench-rag", 2), ("Spec-Bench groups pooled (qa, rag)", 4)]
    path, _ = write_summary(_workloads(), tmp_path, {"suite": "test"}, order=["plain", "csd", "oracle"])
    md = path.read_text()
    assert md.index("## Headline per workload") < md.index("## Results") and "EXACTNESS" not in md


class _CharModel:
    """One token per character, a chat template that writes every message: enough to follow turns."""

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids)

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def __init__(self):
        from csdrafting.protocol import ModelInfo

        self.tokenizer = self.Tok()
        self.info = ModelInfo("chars", 0x110000, 1, frozenset([3]))


def test_conversation_sets_carry_their_turns_and_later_turns_follow_the_own_answer(tmp_path):
    from csdrafting.bench.prompts import chat_render, prepare_prompts

    model = _CharModel()
    got, _ = prepare_prompts(tmp_path, ["specbench-mt_bench", "mtbench", "codeedit-lib"], limit=1, cal=0,
                             tokenizer_model=lambda: model)
    by = {p.dataset: p for p in got}
    assert len(by["specbench-mt_bench"].turns) == 2 and by["specbench-mt_bench"].group == "mt_bench"
    assert len(by["mtbench"].turns) == 1  # the old set stays first-turn-only
    assert by["codeedit-lib"].group == "codeedit-lib" and by["codeedit-lib"].category
    p = by["specbench-mt_bench"]
    assert p.ids == tuple(ord(c) for c in f"<user>{p.turns[0]}<assistant>")
    again, _ = prepare_prompts(tmp_path, ["specbench-mt_bench"], limit=1, cal=0, tokenizer_model=None)
    assert again[0] == p  # cached, turns and group included
    calls = []
    render = chat_render(lambda: calls.append(1) or model)
    answer = [ord(c) for c in "my answer"] + [3]  # ends with the end-of-turn token: the template writes its own
    ids = render(p, [answer])
    assert ids == [ord(c) for c in f"<user>{p.turns[0]}<assistant>my answer<user>{p.turns[1]}<assistant>"]
    assert ids[: len(p.ids) + 9] == list(p.ids) + answer[:-1]  # turn 2 starts with turn 1 and its answer
    render(p, [answer])
    assert calls == [1]  # the tokenizer's model is asked for once


def test_transformers_peer_times_its_prompt_pass_apart():
    """transformers' prompt pass yields the first token: decode-only is the rest, every token priced at the
    rate of the others (as llama-completion's figure is read); with one token there is nothing apart."""
    from types import SimpleNamespace

    from csdrafting.bench.executors import HFExecutor

    ex = HFExecutor.__new__(HFExecutor)  # no weights: only the arithmetic of its metrics
    ex.target_ref, ex.n_params = "qwen2.5-coder-0.5b:Q4_K_M", 100
    ex.log = SimpleNamespace(passes=[(0, [7, 7, 7]), (3, [1]), (4, [2]), (5, [3]), (6, [4])], seconds=4.8)
    m = ex._metrics(None, [7, 7, 7], [1, 2, 3, 4, 5], seconds=5.0, first=1.4)
    assert m.seconds == 5.0 and m.decode_seconds == pytest.approx((5.0 - 1.4) * 5 / 4)
    assert m.prefill_seconds == pytest.approx(0.5) and m.decode_tokens_per_second == pytest.approx(5 / 4.5)
    one = ex._metrics(None, [7, 7, 7], [1], seconds=2.0, first=2.0)
    assert one.decode_seconds == 2.0 and one.prefill_seconds == 0.0


@pytest.mark.parametrize("turn, margin, verdict", [(0, -0.05, "mismatch"), (1, -0.05, "tie"), (1, 0.2, "tie"),
                                                   (1, -0.5, "mismatch")])
def test_a_later_turn_on_a_kept_cache_is_a_tie_within_the_noise_whichever_token_the_replay_prefers(
        monkeypatch, turn, margin, verdict):
    """The cold replay of a later turn has neither method's cache history: when it prefers the method's
    token (a negative margin) the first-turn rule would call it a mismatch; within the noise it is a tie."""
    import csdrafting.exactness as exm

    def fake(model, prompt, reference, candidate, threshold, split_last=False):
        reason = "replaying plain decoding chose 9, not 8" if margin < 0 else ""
        return exm.Divergence(exm.MISMATCH if margin < 0 or margin > threshold else exm.TIE, 0, 8, 9,
                              (1.0 + margin, 1.0), (1.0, 1.0), threshold, reason)

    monkeypatch.setattr(exm, "examine", fake)
    monkeypatch.setattr(exm, "noise_threshold", lambda model: 0.3)
    ex = _executor()
    d = ex.examine([1, 2], [8], [9], turn=turn)
    assert d.verdict == verdict
    if turn and verdict == "tie" and margin < 0:
        assert "cache kept from the earlier turns" in d.reason and "chose 9" in d.reason


def test_merged_turns_keep_routing_decisions():
    """A record's metrics are its turns' merged; routing's decisions and time must survive the merge (they
    are what tells how often a routed cascade went around its neural drafter, and what deciding cost)."""
    from csdrafting.bench.turns import merged
    from csdrafting.cascade.metrics import GenerationMetrics, LevelMetrics

    def turn(direct: int, via: int, seconds: float) -> GenerationMetrics:
        lv = LevelMetrics(level=0, name="t", kind="target", n_params=1)
        return GenerationMetrics([lv], new_tokens=4, seconds=1.0, target_steps=2,
                                 routes={"direct": direct, "via": via, "measure": 0, "seconds": seconds})

    m = merged([turn(3, 1, 0.25), turn(2, 5, 0.5)])
    assert m.routes == {"direct": 5, "via": 6, "measure": 0, "seconds": 0.75}
    assert m.to_dict()["routes"]["direct"] == 5
    assert merged([GenerationMetrics([LevelMetrics(level=0, name="t", kind="target", n_params=1)])]).routes == {}


# ------------------------------------------------------------------------------------------------ repetitions


def test_repeats_run_in_rounds_per_prompt_and_keep_the_first_rounds_keys():
    methods = build_methods(SPEC, grids=GRIDS)
    once, thrice = plan(methods, _prompts()), plan(methods, _prompts(), repeats=3)
    ev1 = [u for u in once if u.phase == EVAL]
    ev3 = [u for u in thrice if u.phase == EVAL]
    assert [u for u in thrice if u.phase == CALIBRATION] == [u for u in once if u.phase == CALIBRATION]
    assert len(ev3) == 3 * len(ev1) and len({u.key for u in thrice}) == len(thrice)
    assert {u.key for u in ev3 if u.rep == 0} == {u.key for u in ev1}  # a run made once resumes into repetitions
    first = [(u.rep, u.method) for u in ev3 if u.prompt_id == ev3[0].prompt_id]
    names, other = [m.name for m in methods], [m.name for m in swapped(methods)]
    # all methods, then all again (rounds), every other round in the swapped order
    assert first == [(r, n) for r in range(3) for n in (other if r % 2 else names)]
    assert sorted(other) == sorted(names) and other != names
    assert [u.key for u in ev3 if u.rep == 2][0].endswith("|plain#r2")
    with pytest.raises(CSDraftingError, match="repeats"):
        plan(methods, _prompts(), repeats=0)


def test_collapse_repeats_takes_median_timings_and_the_worst_verdict():
    from csdrafting.bench.runner import collapse_repeats

    def run(rep, decode, tokens=(1, 2, 3), exactness="identical"):
        r = _rec("humaneval", "p0", "csd", 3 / decode, list(tokens), [_level(0, "T", "target", 100, 3)], new=3)
        r.update(key=r["key"] + (f"#r{rep}" if rep else ""), variant="csd", repeat=rep, exactness=exactness,
                 matches_baseline=exactness == "identical", decode_seconds=decode, e2e_seconds=decode + 1.0,
                 decode_tokens_per_second=3 / decode, e2e_tokens_per_second=3 / (decode + 1.0))
        return r

    plain = _rec("humaneval", "p0", "plain", 10.0, [1, 2, 3], [_level(0, "T", "target", 100, 3)], new=3)
    out = collapse_repeats([plain, run(0, 1.0), run(1, 5.0), run(2, 2.0)])
    assert out[0] is plain and len(out) == 2  # a unit run once passes through unchanged
    csd = out[1]
    assert csd["decode_seconds"] == 2.0 and csd["e2e_seconds"] == 3.0 and csd["seconds"] == pytest.approx(2.0)
    assert csd["decode_tokens_per_second"] == pytest.approx(1.5) and csd["tokens_per_second"] == pytest.approx(1.5)
    assert csd["repeats"] == {"n": 3, "decode_seconds": [1.0, 5.0, 2.0], "e2e_seconds": [2.0, 6.0, 3.0],
                              "identical_outputs": True}
    assert "repeat" not in csd and csd["key"] == "eval|humaneval|p0|csd"
    # one repetition mismatching is reported, with its output, whatever the others did
    bad = collapse_repeats([run(2, 2.0), run(0, 1.0), run(1, 5.0, tokens=(1, 9, 9), exactness="mismatch")])[0]
    assert bad["exactness"] == "mismatch" and bad["tokens"] == [1, 9, 9] and bad["matches_baseline"] is False
    assert bad["repeats"]["identical_outputs"] is False and bad["decode_seconds"] == 2.0
    rows = {(r.dataset, r.method): r for r in aggregate([plain, *collapse_repeats(
        [run(0, 1.0), run(1, 5.0, tokens=(1, 9, 9), exactness="mismatch")])])}
    assert rows[("humaneval", "csd")].mismatches == 1


def test_raising_repeats_on_a_finished_run_adds_only_the_new_rounds(tmp_path):
    from csdrafting.bench.runner import collapse_repeats

    methods, prompts, units = _setup(tmp_path)
    assert _run(tmp_path, _executor(), methods, prompts, units) == len(units)
    more = plan(methods, list(prompts.values()), repeats=2)
    n_eval = sum(u.phase == EVAL for u in units)
    assert _run(tmp_path, _executor(), methods, prompts, more) == n_eval
    recs = _lines(tmp_path / "records.jsonl")
    assert len(recs) == len(units) + n_eval
    assert all(r["matches_baseline"] for r in recs if r["method"] != r["baseline"])  # later rounds checked too
    folded = collapse_repeats(recs)
    assert len(folded) == len(units) and sorted(r["key"] for r in folded) == sorted(u.key for u in units)
    assert all(r["repeats"]["n"] == 2 and r["repeats"]["identical_outputs"] for r in folded if r["phase"] == EVAL)
