"""llama.cpp backend on the real Qwen2.5-Coder-0.5B Q4_K_M GGUF.

llama.cpp's logits depend slightly on how many tokens share a forward pass (different kernels and
summation orders), so rows computed in different batch shapes are compared by argmax and a small
tolerance relative to the logit scale, not bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'csdrafting[llamacpp]')")

from csdrafting import generate  # noqa: E402
from csdrafting.backends.llamacpp import LlamaCppModel  # noqa: E402
from csdrafting.protocol import CSDraftingError  # noqa: E402

pytestmark = pytest.mark.real

DEV_FALLBACK = Path("/tmp/dev-models/qwen2.5-coder-0.5b-q4_k_m.gguf")
PROMPT = 'def is_prime(n: int) -> bool:\n    """Return True if n is a prime number."""\n'
REL_TOL = 0.03  # max |diff| / max |logit| between batch shapes; measured ~0.015 on this model


def _gguf_path() -> Path | None:
    env = os.environ.get("CSDRAFTING_QWEN05_GGUF")
    if env:
        return Path(env)
    try:
        from csdrafting.store import ensure_model  # written concurrently; may not exist yet
    except ImportError:
        return DEV_FALLBACK if DEV_FALLBACK.is_file() else None
    try:
        return Path(ensure_model("qwen2.5-coder-0.5b"))
    except Exception:
        return DEV_FALLBACK if DEV_FALLBACK.is_file() else None


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = _gguf_path()
    if path is None or not path.is_file():
        pytest.skip(
            "Qwen2.5-Coder-0.5B GGUF not found: set CSDRAFTING_QWEN05_GGUF to the file, or install it with the "
            "csdrafting model store"
        )
    return path


@pytest.fixture(scope="module")
def model(gguf: Path) -> LlamaCppModel:
    with LlamaCppModel(gguf, n_ctx=512) as m:
        yield m


@pytest.fixture(scope="module")
def prompt_ids(model: LlamaCppModel) -> list[int]:
    return model.tokenizer.encode(PROMPT)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1))
    assert np.abs(a - b).max() <= REL_TOL * np.abs(b).max()


def test_info_and_tokenizer(model: LlamaCppModel) -> None:
    info = model.info
    assert info.vocab_size == 151936 and info.precision == "Q4_K_M" and info.context_length == 512
    assert {151643, 151645} <= info.eos_token_ids and info.bos_token_id == 151643
    assert info.n_params > 400_000_000 and info.vocab_fingerprint
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "héllo 日本"}])
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok.encode(text)
    assert ids[0] == 151644 and 151645 in ids  # specials are parsed, not spelled out
    assert tok.decode(ids) == text
    dec = tok.stream_decoder()
    assert "".join(dec.push([t]) for t in tok.encode("日本語 🙂")) + dec.flush() == "日本語 🙂"


def test_cache_rollback_matches_fresh(model: LlamaCppModel, prompt_ids: list[int]) -> None:
    cont = model.tokenizer.encode("    if n < 2:\n        return False\n")
    seq = prompt_ids + cont
    model.rollback(0)
    assert list(model.begin(prompt_ids)) == prompt_ids
    model.extend(prompt_ids, logits_from=len(prompt_ids) - 1)
    model.extend(cont[:3])
    model.rollback(len(prompt_ids) + 1)  # drop two of them
    model.extend([999, 1000, 1001])  # a wrong branch ...
    model.rollback(len(prompt_ids) + 1)  # ... thrown away
    got = model.extend(cont[1:], logits_from=len(cont) - 3)  # the last two rows
    assert list(model.cached_tokens) == seq

    model.rollback(0)
    fresh = model.extend(seq)
    _close(got, fresh[-2:])


def test_logits_from_skips_rows(model: LlamaCppModel, prompt_ids: list[int]) -> None:
    model.rollback(0)
    full = model.extend(prompt_ids)
    assert full.shape == (len(prompt_ids), 151936) and full.dtype == np.float32
    for skip in (len(prompt_ids) - 1, 5, len(prompt_ids)):
        model.rollback(0)
        part = model.extend(prompt_ids, logits_from=skip)
        assert part.shape == (len(prompt_ids) - skip, 151936)
        np.testing.assert_array_equal(part, full[skip:])  # same batch shape: bit-identical


def test_batches_larger_than_n_batch(gguf: Path, prompt_ids: list[int]) -> None:
    with LlamaCppModel(gguf, n_ctx=64, n_batch=8) as small:
        seq = (prompt_ids * 3)[:40]
        out = small.extend(seq, logits_from=30)
        assert out.shape == (10, 151936) and len(small.cached_tokens) == 40
        with pytest.raises(CSDraftingError, match="n_ctx"):
            small.extend(list(range(100, 130)))
        assert len(small.cached_tokens) == 40  # the refused extension left the cache alone
        small.rollback(0)
        _close(out, small.extend(seq)[30:])


def test_missing_file() -> None:
    with pytest.raises(CSDraftingError, match="does not exist"):
        LlamaCppModel("/nonexistent/model.gguf")


def _greedy_loop(model: LlamaCppModel, prompt: list[int], n: int) -> list[int]:
    model.rollback(0)
    row = model.extend(prompt, logits_from=len(prompt) - 1)[-1]
    out: list[int] = []
    while len(out) < n:
        out.append(int(row.argmax()))
        if out[-1] in model.info.eos_token_ids:
            break
        row = model.extend([out[-1]])[-1]
    return out


def test_plain_greedy_matches_loop(model: LlamaCppModel, prompt_ids: list[int]) -> None:
    expected = _greedy_loop(model, prompt_ids, 16)
    got = generate(model, prompt_ids, max_new_tokens=16)
    assert got.tokens == expected


def test_self_speculative_is_exact(model: LlamaCppModel, gguf: Path, prompt_ids: list[int]) -> None:
    plain = generate(model, prompt_ids, max_new_tokens=24).tokens
    with LlamaCppModel(gguf, n_ctx=512) as drafter:
        spec = generate(model, prompt_ids, drafters=[drafter], k=[[4]], max_new_tokens=24)
    assert spec.tokens == plain
