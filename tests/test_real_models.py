"""The user-facing claims on the real packaged models (Qwen2.5-Coder, installed by the model store)."""

from __future__ import annotations

import pytest

from csdrafting import Cascade
from csdrafting.bench.datasets import load
from csdrafting.spec import DEFAULT_SPEC, build, load_model
from csdrafting.text import encode

N_NEW = 48


@pytest.fixture(scope="module")
def default_cascade():
    target, drafters, config = build(DEFAULT_SPEC, progress=False)
    return target, drafters, config


def test_default_cascade_is_exact_on_humaneval(default_cascade):
    """CS Drafting's greedy output equals plain greedy decoding of the same target, token for token."""
    target, drafters, config = default_cascade
    plain, csd = Cascade(target, []), Cascade(target, drafters, config)
    prompts = load("humaneval", limit=3)
    accepted = 0
    for pr in prompts:
        ids = encode(target, pr.text)
        want = plain.generate(ids, N_NEW).tokens
        got = csd.generate(ids, N_NEW)
        assert got.tokens == want, f"{pr.id}: cascade output differs from plain decoding"
        assert len(want) == N_NEW or want[-1] in target.info.eos_token_ids
        accepted += sum(lv.accepted for lv in got.metrics.levels[1:])
    assert accepted > 0  # the drafters were really used


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
