"""BigramTable counting/serialization, and the packaged Qwen2.5 table (Max-Gram's fallback)."""


import numpy as np
import pytest

from csdrafting.drafters.bigram import BigramTable
from csdrafting.drafters.bigram_corpus import default_bigram_path, load_default_qwen_bigram
from csdrafting.protocol import CSDraftingError

QWEN_VOCAB = 151_936
# Qwen2.5 token ids (checked against the tokenizer below when a GGUF is available)
TOK_DEF_SP = 707  # " def"
TOK_UNDERSCORE_SP = 716  # " _"
TOK_DUNDER_SP = 1304  # " __"

# Held-out, hand-written Python (not from the corpus). With the packaged table the bigram predicts the actual
# next token at ~20% of its positions (measured; ~15-16% on the stdlib's own test/ files, which the corpus
# excludes). A garbage table gets ~0%.
HELD_OUT = '''import os
import sys
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Inventory:
    """A small inventory of named items with quantities."""

    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, count: int = 1) -> None:
        if count < 0:
            raise ValueError("count must be non-negative")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> bool:
        current = self.items.get(name, 0)
        if current < count:
            return False
        self.items[name] = current - count
        return True

    def total(self) -> int:
        return sum(self.items.values())


def read_inventory(path: str) -> Optional[Inventory]:
    if not os.path.exists(path):
        return None
    inv = Inventory()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, count = line.partition("=")
            inv.add(name.strip(), int(count))
    return inv


if __name__ == "__main__":
    result = read_inventory(sys.argv[1])
    print(result.total() if result is not None else 0)
'''


def test_from_sequences_counts_and_ties():
    seqs = [[1, 2, 1, 2, 1, 3], [4, 5], [4, 6], [0, 0], [7]]
    t = BigramTable.from_sequences(seqs, vocab_size=8, meta={"corpus": "hand"})
    assert t.vocab_size == 8
    assert t.next_token(1) == 2  # 1->2 twice beats 1->3 once
    assert t.next_token(2) == 1
    assert t.next_token(4) == 5  # 4->5 and 4->6 tie: the smaller id wins
    assert t.next_token(0) == 0
    assert t.next_token(3) is None  # only ever last
    assert t.next_token(7) is None  # a lone token forms no pair
    assert t.next_token(6) is None
    assert t.next_token(-1) is None and t.next_token(8) is None  # out of range
    assert t.meta["corpus"] == "hand" and t.meta["n_pairs"] == 5 + 1 + 1 + 1
    assert t.meta["n_sources"] == 4
    with pytest.raises(CSDraftingError):
        BigramTable.from_sequences([[1, 8]], vocab_size=8)


def test_from_texts_uses_encoder():
    t = BigramTable.from_texts(["abab", "ac"], encode=lambda s: [ord(c) - ord("a") for c in s], vocab_size=3)
    assert t.next_token(0) == 1 and t.next_token(1) == 0 and t.next_token(2) is None


def test_save_load_round_trip(tmp_path):
    t = BigramTable.from_sequences([[3, 1, 3, 2, 3, 1]], vocab_size=5, meta={"corpus": "x", "nested": {"a": [1, 2]}})
    path = tmp_path / "sub" / "table.npz"
    t.save(path)
    u = BigramTable.load(path)
    assert np.array_equal(u.successor, t.successor) and u.successor.dtype == np.int32
    assert u.meta == t.meta
    with pytest.raises(CSDraftingError):
        BigramTable.load(tmp_path / "missing.npz")


def test_packaged_qwen_table():
    path = default_bigram_path()
    assert path.is_file(), path
    assert path.stat().st_size < 1_000_000
    t = load_default_qwen_bigram()
    assert t.vocab_size == QWEN_VOCAB
    meta = t.meta
    assert meta["tokenizer"]["vocab_size"] == QWEN_VOCAB
    assert len(meta["file_list_sha256"]) == 64 and len(meta["tokenizer"]["token_table_sha256"]) == 64
    assert meta["n_files"] > 100 and meta["n_tokens"] > 1_000_000
    coverage = float((t.successor >= 0).mean())
    print(f"packaged Qwen bigram: {meta['n_files']} files, {meta['n_tokens']:,} tokens, coverage {coverage:.1%}")
    assert 0.1 < coverage < 0.9  # ~26%: Python + English; most CJK etc. tokens never occur
    assert meta["n_sources"] == int((t.successor >= 0).sum())
    assert int(t.successor.max()) < QWEN_VOCAB
    # in Python code " def" is followed by " __" (__init__ etc.) or " _" (private helpers)
    assert t.next_token(TOK_DEF_SP) in (TOK_UNDERSCORE_SP, TOK_DUNDER_SP)


@pytest.fixture(scope="module")
def qwen_vocab(qwen05_gguf):
    import llama_cpp

    gguf = str(qwen05_gguf)
    return gguf, llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)


@pytest.mark.real
def test_packaged_table_matches_tokenizer_and_predicts(qwen_vocab):
    from csdrafting.drafters.bigram_corpus import _tokenizer_info

    gguf, llm = qwen_vocab
    t = load_default_qwen_bigram()
    assert _tokenizer_info(llm, gguf)["token_table_sha256"] == t.meta["tokenizer"]["token_table_sha256"]

    def enc(s):
        return llm.tokenize(s.encode(), add_bos=False, special=False)

    def dec(i):
        return llm.detokenize([i]).decode("utf-8", errors="replace")

    assert enc(" def") == [TOK_DEF_SP] and enc(" _") == [TOK_UNDERSCORE_SP] and enc(" __") == [TOK_DUNDER_SP]
    for word in ("def", " def", "import", " import", " return"):
        (tok,) = enc(word)
        nxt = t.next_token(tok)
        assert nxt is not None, word
        print(f"{word!r} -> {dec(nxt)!r}")
    (imp,) = enc(" import")
    assert dec(t.next_token(imp)).strip().isidentifier()

    ids = np.asarray(enc(HELD_OUT))
    hits = float((t.successor[ids[:-1]] == ids[1:]).mean())
    print(f"held-out next-token hit rate {hits:.1%} over {ids.size - 1} positions")
    assert hits >= 0.12
