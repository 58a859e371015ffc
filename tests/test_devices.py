"""The transformers backend on other dtypes and devices, and what leaves the device.

Reduced precision changes what "exact" can mean. In float64 (test_greedy_exact.py) a batched review and
one-token decoding agree to ~1e-15, so the cascade's output must equal plain decoding token for token.
In float32/bfloat16/float16 the logits of a position depend, by rounding, on the shape of the pass that
computed them (the target reviews k+1 tokens at once, plain decoding one): where the top two logits are
closer than that rounding, the two may pick different tokens, and both are the target's greedy choice
within its own arithmetic. So the assertion here is: every token the cascade emits is the argmax of the
target's one-token logits at that position, or within TOL_EPS[dtype] * eps(dtype) * max|logit| of it (a
near tie). The tolerance is grounded, not guessed: the test measures the batched-vs-one-token
difference on the same models and requires it to stay below half the tolerance; and
a drafter's own greedy text (a different model) must fail the check, so the tolerance does not let
everything through.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import table_lm
import tiny
from csdrafting import Cascade, CascadeConfig, MaxGram, generate
from csdrafting.backends.devices import normalize_device, normalize_dtype, torch_device
from csdrafting.backends.hf import HFCausalLM, load_hf
from csdrafting.cascade import acceptance
from csdrafting.protocol import ArgmaxExtension, CSDraftingError
from csdrafting.spec import CascadeSpec

PROMPTS = [
    [1, 5, 6, 7, 8, 5, 6, 7, 9, 10, 11, 12, 5, 6],
    [1, 30, 31, 32, 33, 34, 35, 30, 31, 32],
]
N_NEW = 24
# A near tie: a gap below TOL_EPS machine epsilons times the row's largest |logit|. Measured here (x86-64,
# AVX2, torch 2.13) on the models below, batched and one-token logits differ by up to 42 eps in float32
# (rounding accumulated over the layers, eps = 1.2e-7), 1.6 in bfloat16 (eps = 7.8e-3: the logits' own
# rounding dominates) and 3.6 in float16 (eps = 9.8e-4); the tolerances leave a margin of 2-6x.
TOL_EPS = {torch.float32: 256, torch.bfloat16: 8, torch.float16: 16}
DTYPES = list(TOL_EPS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second torch thread only spins (40x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _family(dtype: torch.dtype):
    target = tiny.causal(0, dtype=dtype)
    return target, [tiny.perturbed(target, s, seed=i + 1) for i, s in enumerate((0.01, 0.02))]


def one_token_rows(model: HFCausalLM, prompt: list[int], out: list[int]) -> list[np.ndarray]:
    """The target's rows at each output position, computed as plain decoding computes them."""
    model.rollback(0)
    model.begin(prompt)
    rows = [model.extend(prompt, logits_from=len(prompt) - 1)[-1]]
    for t in out[:-1]:
        rows.append(model.extend([t])[-1])
    model.rollback(0)
    return rows


def gaps(model: HFCausalLM, prompt: list[int], out: list[int]) -> tuple[list[float], list[float]]:
    """Per output token: how far its logit is below the row's maximum, and the near-tie tolerance there."""
    dtype = next(model.model.parameters()).dtype
    eps = torch.finfo(dtype).eps
    rows = one_token_rows(model, prompt, out)
    return ([float(r.max() - r[t]) for r, t in zip(rows, out)],
            [TOL_EPS[dtype] * eps * float(np.abs(r).max()) for r in rows])


def assert_greedy_within_ties(model, prompt, out, what: str, plain: list[int]) -> int:
    """Every token is the argmax or a near tie; returns the number of near ties taken. `plain` is plain
    decoding's output, whose tokens are exact argmaxes of these very rows (asserted by the caller)."""
    if out == plain:
        return 0
    g, tol = gaps(model, prompt, out)
    bad = [(i, g[i], tol[i]) for i in range(len(out)) if g[i] > tol[i]]
    assert not bad, f"{what}: tokens below the argmax by more than the rounding tolerance (pos, gap, tol): {bad}"
    return sum(x > 0 for x in g)


def _configs(T, D1, D2):
    return {
        "speculative k=4": lambda p: generate(T, p, [D1], k=[[4]], max_new_tokens=N_NEW),
        "2 drafters + Max-Gram, lenience 3": lambda p: generate(
            T, p, [D1, D2, MaxGram()], k=[[2, 6, 8], [0, 2, 4], [0, 0, 4]], lenience=3, max_new_tokens=N_NEW),
        "horizontal only": lambda p: generate(T, p, [D1, D2], k=[[2, 6], [0, 0]], max_new_tokens=N_NEW),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_greedy_in_reduced_precision(dtype):
    target, drafters = _family(dtype)
    T = tiny.wrap(target, "target")
    D1, D2 = (tiny.wrap(d, f"d{i + 1}") for i, d in enumerate(drafters))
    assert T.info.precision == str(dtype).removeprefix("torch.")
    eps = torch.finfo(dtype).eps
    accepted = ties = 0
    for prompt in PROMPTS:
        plain = generate(T, prompt, max_new_tokens=N_NEW).tokens
        single = np.stack(one_token_rows(T, prompt, plain))
        assert (single.argmax(axis=1) == plain).all(), "plain decoding must be the exact argmax of the rows it computed itself"
        # the tolerance is grounded: at least twice the batched-vs-one-token difference measured here
        batched = T.extend(prompt + plain[:-1], logits_from=len(prompt) - 1)  # one pass, as a review computes them
        T.rollback(0)
        diff = np.abs(single - batched).max(axis=1) / (eps * np.abs(single).max(axis=1))
        assert diff.max() <= TOL_EPS[dtype] / 2, f"{dtype}: batched rows differ by {diff.max():.1f} eps; raise TOL_EPS"
        for name, run in _configs(T, D1, D2).items():
            r = run(prompt)
            assert len(r.tokens) == N_NEW or r.finish_reason == "eos"
            ties += assert_greedy_within_ties(T, prompt, r.tokens, f"{dtype} {name}", plain)
            accepted += sum(lv.accepted for lv in r.metrics.levels[1:])
        # the check has power: a different model's greedy text fails it
        own = generate(D2, prompt, max_new_tokens=N_NEW).tokens
        g, tol = gaps(T, prompt, own)
        assert any(x > t for x, t in zip(g, tol)), "the drafter's own text passed as the target's: tolerance too loose"
    assert accepted > 0
    assert ties <= 2, f"{ties} near ties taken: more than rounding explains on {len(PROMPTS)} prompts"


def test_float64_greedy_path_copies_no_rows():
    """Strict greedy reads only argmax ids (extend_argmax); lenient review and sampling read float32 rows."""

    class Counting(HFCausalLM):
        rows = ids = 0

        def extend(self, tokens, logits_from=0):
            out = super().extend(tokens, logits_from)
            self.rows += len(out)
            return out

        def extend_argmax(self, tokens, logits_from=0):
            out = super().extend_argmax(tokens, logits_from)
            self.ids += len(out)
            return out

    target, drafters = _family(torch.float64)
    ref = tiny.causal(0)  # same seed, same weights
    prompt = PROMPTS[0]
    expect = ref.generate(torch.tensor([prompt]), max_new_tokens=N_NEW, do_sample=False)[0].tolist()[len(prompt):]

    def fresh():
        return Counting(target, name="t"), [Counting(d, name=f"d{i}") for i, d in enumerate(drafters)]

    T, (D1, D2) = fresh()
    assert isinstance(T, ArgmaxExtension)
    r = generate(T, prompt, [D1, D2, MaxGram()], k=[[2, 6, 8], [0, 2, 4], [0, 0, 4]], max_new_tokens=N_NEW)
    assert r.tokens == expect
    assert (T.rows, D1.rows, D2.rows) == (0, 0, 0) and min(T.ids, D1.ids, D2.ids) > 0

    T, (D1, D2) = fresh()
    r = generate(T, prompt, [D1, D2, MaxGram()], k=[[2, 6, 8], [0, 2, 4], [0, 0, 4]], lenience=2, max_new_tokens=N_NEW)
    assert r.tokens == expect
    assert T.rows == 0 and D1.rows > 0 and D2.rows > 0  # lenient drafters need p(x); the target never

    T, (D1, _) = fresh()
    generate(T, prompt, [D1], k=[[4]], max_new_tokens=8, do_sample=True, seed=0)
    assert T.ids == 0 and T.rows > 0 and D1.ids == 0


def test_cached_ids_are_recomputed_when_rows_are_needed():
    """A greedy generation leaves argmax ids in the engine's row cache; a sampling generation that reuses
    the KV cache must recompute full rows there, and sample exactly what a cold cascade samples."""
    target, drafters = _family(torch.float64)
    T, D1 = tiny.wrap(target, "t"), tiny.wrap(drafters[0], "d1")
    warm = Cascade(T, [D1], CascadeConfig.make([[4]]))
    greedy = warm.generate(PROMPTS[0], 12, keep_cache=True)
    from csdrafting.cascade.config import SamplingConfig

    cfg = SamplingConfig(do_sample=True, temperature=0.9, seed=7)
    hot = warm.generate(PROMPTS[0] + greedy.tokens[:5], 12, cfg, keep_cache=True).tokens
    T2, D2 = tiny.wrap(tiny.causal(0), "t"), tiny.wrap(tiny.perturbed(tiny.causal(0), 0.01, seed=1), "d1")
    cold = Cascade(T2, [D2], CascadeConfig.make([[4]])).generate(PROMPTS[0] + greedy.tokens[:5], 12, cfg).tokens
    assert hot == cold


def test_models_without_argmax_extension_still_work():
    """A protocol-only model (no extend_argmax): greedy reads its rows and takes the argmax here."""
    t, ds = table_lm.family(vocab=7, eos=None)
    prompt = [1, 2, 3, 1, 2]
    seq = list(prompt)
    for _ in range(12):
        seq.append(int(np.argmax(t.logits_at(seq, len(seq) - 1))))
    r = generate(t, prompt, [ds[0], MaxGram()], k=[[2, 5], [0, 3]], max_new_tokens=12)
    assert r.tokens == seq[len(prompt):]


def test_review_argmax_is_review_greedy_at_lenience_one():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 6))
        logits = rng.normal(size=(n + 1, 5)).astype(np.float32)
        top = np.argmax(logits, axis=1)
        draft = [int(top[i]) if rng.random() < 0.7 else int(rng.integers(0, 5)) for i in range(n)]
        a = acceptance.review_argmax(top, draft)
        b = acceptance.review_greedy(logits, draft, [None] * n, 1.0, False)
        assert (a.n_accepted, a.tokens) == (b.n_accepted, b.tokens)


# ---------------------------------------------------------------------------------------------- sampling

N_SAMPLES = 3000
ALPHA = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sampling_in_reduced_precision(dtype):
    """Sampling through the backend in `dtype`: the cascade's 3-token outputs against the target's
    distribution enumerated from its one-token rows (vocabulary 5, chi-square at 1e-3).

    The power is modest by design (N_SAMPLES runs; test_sampling_exact.py has the full-power tests on
    the same engine): it detects a deviation of Cohen's w = 0.13 with probability > 0.9, while the
    rounding difference between batched and one-token rows in bfloat16 is far below that. What it proves
    is the plumbing: reduced-precision rows leave the backend as float32 distributions the engine samples.
    At this size it would NOT catch the subtle broken variant of test_sampling_exact.py (tried: it passes),
    which is why that test, with 60,000 runs on protocol-level models, carries the exactness claim.
    """
    from scipy import stats

    from csdrafting.cascade.config import SamplingConfig
    from csdrafting.cascade.sampling import warp

    vocab, eos, prompt, n_new = 5, 0, [1, 2, 3, 1, 2], 3
    target = tiny.causal(3, layers=1, hidden=32, vocab=vocab, eos=eos, dtype=dtype)
    T = tiny.wrap(target, "t")
    D = tiny.wrap(tiny.perturbed(target, 0.3, seed=4), "d")
    cfg = SamplingConfig(do_sample=True, temperature=0.8)

    exact: dict[tuple, float] = {}

    def walk(seq: list[int], prob: float) -> None:
        if len(seq) - len(prompt) == n_new:
            exact[tuple(seq[len(prompt):])] = prob
            return
        T.rollback(0)
        p = warp(T.extend(seq, logits_from=len(seq) - 1)[-1].astype(np.float64), cfg)
        for t in range(vocab):
            if p[t] == 0:
                continue
            if t == eos:
                exact[tuple(seq[len(prompt):] + [t])] = prob * p[t]
            else:
                walk(seq + [t], prob * p[t])

    walk(list(prompt), 1.0)
    assert abs(sum(exact.values()) - 1) < 1e-6
    engine = Cascade(T, [D, MaxGram()], CascadeConfig.make([[2, 3], [0, 2]], lenience=2))
    counts: dict[tuple, int] = {}
    for seed in range(N_SAMPLES):
        r = engine.generate(prompt, n_new, SamplingConfig(True, 0.8, seed=seed), keep_cache=True)
        counts[tuple(r.tokens)] = counts.get(tuple(r.tokens), 0) + 1
    assert set(counts) <= set(exact)
    keys = sorted(exact, key=exact.get)
    obs, exp, po, pe = [], [], 0.0, 0.0
    for k in keys:  # pool rare outcomes until each cell expects at least 5
        po, pe = po + counts.get(k, 0), pe + exact[k] * N_SAMPLES
        if pe >= 5:
            obs.append(po)
            exp.append(pe)
            po = pe = 0.0
    obs[-1] += po
    exp[-1] += pe
    exp = np.array(exp) * (sum(obs) / sum(exp))
    p = float(stats.chisquare(obs, exp).pvalue)
    assert p > ALPHA, f"{dtype}: chi-square p = {p:.2e}: the output is not the target's distribution"
    df = len(obs) - 1
    assert stats.ncx2.sf(stats.chi2.ppf(1 - ALPHA, df), df, N_SAMPLES * 0.13**2) > 0.9  # the stated power


# ------------------------------------------------------------------------------------- names and errors


def test_dtype_and_device_names():
    assert [normalize_dtype(x) for x in ("bf16", "FP16", "float32", "torch.bfloat16", "half")] == [
        "bfloat16", "float16", "float32", "bfloat16", "float16"]
    assert [normalize_device(x) for x in ("CPU", "cuda", "cuda:1", "mps", "auto")] == ["cpu", "cuda", "cuda:1", "mps", "auto"]
    for bad in ("int8", "float64x", ""):
        with pytest.raises(CSDraftingError, match="float32, bfloat16, float16"):
            normalize_dtype(bad)
    for bad in ("gpu", "cuda:x", "tpu", "cuda1"):
        with pytest.raises(CSDraftingError, match="'cpu', 'cuda'"):
            normalize_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_says_what_to_change(tmp_path):
    with pytest.raises(CSDraftingError, match="--device cpu"):
        torch_device("cuda")
    tiny.causal(0).save_pretrained(tmp_path)
    with pytest.raises(CSDraftingError, match=r"torch.cuda.is_available\(\) is False"):
        load_hf(tmp_path, device="cuda:0")


def test_load_in_bfloat16_and_with_a_device_map(tmp_path):
    tiny.causal(0).to(torch.float32).save_pretrained(tmp_path)
    m = load_hf(tmp_path, dtype="bf16", name="tiny")
    assert m.info.precision == "bfloat16" and next(m.model.parameters()).dtype == torch.bfloat16
    rows = m.extend([1, 5, 6])
    assert rows.dtype == np.float32 and rows.shape == (3, tiny.VOCAB)
    m.rollback(0)
    assert list(m.extend_argmax([1, 5, 6])) == list(np.argmax(rows, axis=1))
    pytest.importorskip("accelerate")
    auto = load_hf(tmp_path, device="auto")  # accelerate's device map: here everything on the CPU
    assert auto.info.precision == "float32" and str(auto.device) == "cpu"
    assert auto.extend([1, 5, 6]).shape == (3, tiny.VOCAB)
    with pytest.raises(CSDraftingError, match="unknown dtype"):
        load_hf(tmp_path, dtype="int4")


def test_spec_placement():
    q05, q15 = "qwen2.5-coder-0.5b:Q4_K_M", "qwen2.5-coder-1.5b:F32"
    s = CascadeSpec(target=q15, drafters=[q05, "maxgram"], k=[[4, 8], [0, 4]], backend="hf", device="CPU",
                    dtype="bf16", devices={q05: "cpu"})
    s.validate()
    assert (s.device, s.dtype) == ("cpu", "bfloat16")
    assert s.placement(q15) == {"device": "cpu", "dtype": "bfloat16"}
    again = CascadeSpec.from_json(s.to_json())
    assert again.to_json() == s.to_json() and again.devices == {q05: "cpu"}
    # defaults stay out of the JSON: specs written before these fields compare equal
    plain = CascadeSpec(target=q15)
    assert not {"device", "dtype", "devices", "n_gpu_layers"} & set(plain.to_json())
    assert plain.placement(q15) == {"n_gpu_layers": 0}
    bad = [
        (dict(backend="llamacpp", device="cuda"), "--backend hf"),
        (dict(backend="llamacpp", dtype="bfloat16"), "--backend hf"),
        (dict(backend="hf", n_gpu_layers=10), "llama.cpp backend"),
        (dict(backend="hf", devices={"other:F32": "cpu"}), "not a model of this cascade"),
        (dict(backend="hf", dtype="float8"), "unknown dtype"),
        (dict(backend="llamacpp", n_gpu_layers=-2), ">= -1"),
    ]
    for kw, msg in bad:
        with pytest.raises(CSDraftingError, match=msg):
            CascadeSpec(target=q15, drafters=[q05], k=[[4]], **kw).validate()


def test_cli_flags_reach_the_spec():
    import argparse

    from csdrafting.flags import add_cascade_args, spec_from_args

    p = argparse.ArgumentParser()
    add_cascade_args(p)
    q05, q15 = "qwen2.5-coder-0.5b:Q4_K_M", "qwen2.5-coder-1.5b:F32"
    args = p.parse_args(["--backend", "hf", "--device", "cpu", "--dtype", "bfloat16", "--target", q15,
                         "--drafter", q05, "--model-device", f"{q05}=cpu"])
    spec = spec_from_args(args)
    assert (spec.backend, spec.device, spec.dtype, spec.devices) == ("hf", "cpu", "bfloat16", {q05: "cpu"})
    assert "bfloat16 on cpu" in spec.describe()
    spec = spec_from_args(p.parse_args(["--n-gpu-layers", "-1"]))
    assert spec.n_gpu_layers == -1 and "all GPU layers" in spec.describe()
    with pytest.raises(CSDraftingError, match="REF=DEVICE"):
        spec_from_args(p.parse_args(["--backend", "hf", "--model-device", "cuda:1"]))
    with pytest.raises(CSDraftingError, match="--backend hf"):
        spec_from_args(p.parse_args(["--device", "cuda"]))


def test_llamacpp_gpu_layers_are_checked():
    llamacpp = pytest.importorskip("csdrafting.backends.llamacpp")
    with pytest.raises(CSDraftingError, match=">= -1"):
        llamacpp.check_n_gpu_layers(-3)
    llamacpp.check_n_gpu_layers(0)
    if not llamacpp._L.llama_supports_gpu_offload():
        with pytest.raises(CSDraftingError, match="without a GPU backend"):
            llamacpp.check_n_gpu_layers(8)


@pytest.mark.real
def test_packaged_model_in_bfloat16():
    """The packaged 0.5B through transformers in bfloat16 (its float32 checkpoint, made by the store, cast on
    loading): labelled with both precisions, and a Max-Gram cascade on it is greedy within ties."""
    from csdrafting.drafters.bigram_corpus import load_default_qwen_bigram
    from csdrafting.spec import load_model
    from csdrafting.text import encode

    m = load_model("qwen2.5-coder-0.5b:Q4_K_M", backend="hf", dtype="bfloat16", progress=False)
    assert m.info.precision == "bfloat16 from Q4_K_M" and str(m.device) == "cpu"
    ids = encode(m, "def fibonacci(n):\n    if n < 2:\n        return n\n    return")
    plain = Cascade(m, []).generate(ids, 6).tokens
    sd = Cascade(m, [MaxGram(load_default_qwen_bigram())], CascadeConfig.make([[4]])).generate(ids, 6)
    assert len(plain) == 6
    assert_greedy_within_ties(m, ids, sd.tokens, "0.5B bfloat16, Max-Gram k=4", plain)
