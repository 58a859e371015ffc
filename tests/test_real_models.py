"""The user-facing claims on the real packaged models (Qwen2.5-Coder, installed by the model store)."""

from __future__ import annotations

import pytest

from csdrafting import Cascade, CascadeConfig, MaxGram
from csdrafting.drafters.bigram_corpus import load_default_qwen_bigram
from csdrafting.exactness import TIE, examine, noise_threshold
from csdrafting.datasets import load
from csdrafting.cascade.planning import CostCurve
from csdrafting.spec import DEFAULT_SPEC, build, load_model
from csdrafting.text import encode

pytestmark = pytest.mark.real  # the packaged Qwen2.5-Coder weights, from the model store

N_NEW = 48


@pytest.fixture(scope="module")
def default_cascade():
    target, drafters, config = build(DEFAULT_SPEC, progress=False)
    return target, drafters, config


# A review curve shaped like a memory-bound target (the F32 tier, or a GPU): a few more tokens cost little
# more than one. Under it cost-aware drafting drafts whenever it is confident, whatever this machine's own
# measured curve says, so the tests below exercise the dynamic drafting paths on every machine.
MEMORY_BOUND = CostCurve((1, 2, 4, 8, 16, 24), (0.30, 0.30, 0.32, 0.36, 0.45, 0.55))
CHEAP_DRAFTER = CostCurve((1, 2, 4, 8, 16, 24), (0.03, 0.035, 0.04, 0.05, 0.07, 0.09))


def test_default_cascade_is_exact_on_humaneval(default_cascade, qwen05_gguf):
    """The default cascade (the suffix drafter, cost-aware, on the shipped Q4_K_M target), the same drafter
    and a dynamic 0.5B reviewing it under a memory-bound review curve, and the paper's vertical + horizontal
    cascade with lenience reproduce plain greedy decoding of the same target token for token.

    The default prices drafts with the target's cost curve measured on this machine; on 2 busy cores it may
    rightly draft (almost) nothing, so only its exactness is asserted. The other three must really draft.
    """
    from csdrafting.backends.llamacpp import LlamaCppModel
    from csdrafting.drafters.suffix import SuffixDrafter, default_calibration

    target, drafters, config = default_cascade
    small = LlamaCppModel(qwen05_gguf, n_threads=2, n_ctx=4096, name="qwen2.5-coder-0.5b")
    cal = default_calibration()
    engines = {
        "default": Cascade(target, drafters, config),
        "suffix drafter, cost-aware, memory-bound review": Cascade(
            target, [SuffixDrafter(cal)], CascadeConfig.make([[16]], dynamic=True, costs=[MEMORY_BOUND, None])),
        "0.5B reviewing the suffix drafter, cost-aware, memory-bound review": Cascade(
            target, [small, SuffixDrafter(cal)],
            CascadeConfig.make([[8, 12], [0, 6]], dynamic=True, costs=[MEMORY_BOUND, CHEAP_DRAFTER, None])),
        "0.5B reviewing Max-Gram, horizontal, lenience 2": Cascade(
            target, [small, MaxGram(load_default_qwen_bigram())], CascadeConfig.make([[6, 10], [0, 2]], lenience=2)),
    }
    plain = Cascade(target, [])
    prompts = load("humaneval", limit=3)
    accepted = {name: 0 for name in engines}
    for pr in prompts:
        ids = encode(target, pr.text)
        want = plain.generate(ids, N_NEW).tokens
        assert len(want) == N_NEW or want[-1] in target.info.eos_token_ids
        for name, engine in engines.items():
            got = engine.generate(ids, N_NEW)
            if got.tokens != want:
                # only a numerical tie (logits closer than the target's measured batch-shape noise) may differ
                d = examine(target, ids, want, got.tokens, noise_threshold(target))
                assert d.verdict == TIE, f"{pr.id}, {name}: {d.describe()}"
            accepted[name] += sum(lv.accepted for lv in got.metrics.levels[1:])
    del accepted["default"]
    assert all(a > 0 for a in accepted.values()), accepted  # the drafting paths were really exercised


def test_backends_agree_on_greedy_tokens(qwen05_gguf):
    """llama.cpp (Q4_K_M GGUF) and transformers (the same weights dequantized to float32) decode alike."""
    from csdrafting.backends.llamacpp import LlamaCppModel

    lc = LlamaCppModel(qwen05_gguf, n_threads=2, n_ctx=1024)
    hf = load_model("qwen2.5-coder-0.5b:Q4_K_M", backend="hf", progress=False)
    prompt = load("humaneval", limit=1)[0].text
    ids = encode(lc, prompt)
    assert ids == encode(hf, prompt)  # same tokenizer, same ids
    a = Cascade(lc, []).generate(ids, 24).tokens
    b = Cascade(hf, []).generate(ids, 24).tokens
    assert a == b
