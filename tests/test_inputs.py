"""Bad input gets an error that names what to change."""

import numpy as np
import pytest

import table_lm
import tiny
from csdrafting import CascadeConfig, CSDraftingError, KMatrix, MaxGram, SamplingConfig, generate
from csdrafting.drafters.bigram import BigramTable


@pytest.fixture(scope="module")
def fam():
    return table_lm.family()


@pytest.mark.parametrize(
    "k, spelling, message",
    [
        ([[3, 4]], "cumulative", "square"),
        ([[3, 4], [1, 2]], "cumulative", "upper triangular"),
        ([[5, 3], [0, 2]], "cumulative", "decreases"),
        ([[2, -1], [0, 2]], "increments", "non-negative"),
        ([[2, 1.5], [0, 2]], "cumulative", "integers"),
        ([[0, 0], [0, 2]], "cumulative", "no draft tokens"),
        ("[[2, 3], [0", "cumulative", "JSON"),
        ([[2, 3], [0, 1]], "sideways", "spelling"),
    ],
)
def test_invalid_k(k, spelling, message):
    with pytest.raises(CSDraftingError, match=message):
        KMatrix.parse(k, spelling)


def test_k_spellings_agree():
    a = KMatrix.parse([[5, 14, 10], [0, 1, 10], [0, 0, 10]], "increments")
    b = KMatrix.parse([[5, 19, 29], [0, 1, 11], [0, 0, 10]], "cumulative")
    assert a == b and a.increments() == [[5, 14, 10], [0, 1, 10], [0, 0, 10]]


def test_k_shape_must_match_drafters(fam):
    t, ds = fam
    with pytest.raises(CSDraftingError, match="3x3"):
        generate(t, [1, 2], [ds[0], ds[1], MaxGram()], k=[[2, 4], [0, 2]], max_new_tokens=3)
    with pytest.raises(CSDraftingError, match="need a"):
        generate(t, [1, 2], [ds[0]], max_new_tokens=3)
    with pytest.raises(CSDraftingError, match="no drafters"):
        generate(t, [1, 2], [], k=[[2]], max_new_tokens=3)


def test_lenience_and_sampling_arguments():
    with pytest.raises(CSDraftingError, match="lenience"):
        CascadeConfig.make([[2]], lenience=0.5)
    with pytest.raises(CSDraftingError, match="top_p"):
        SamplingConfig(True, 1.0, top_p=0)
    with pytest.raises(CSDraftingError, match="temperature"):
        SamplingConfig(True, 0.0)
    with pytest.raises(CSDraftingError, match="top_k"):
        SamplingConfig(True, 1.0, top_k=-1)


def test_mismatched_vocabulary(fam):
    t, _ = fam
    other = table_lm.TableLM(np.zeros((7, 7, 7)), "seven-token drafter")
    with pytest.raises(CSDraftingError, match="vocabulary of 7 tokens"):
        generate(t, [1, 2], [other], k=[[2]], max_new_tokens=3)
    with pytest.raises(CSDraftingError, match="tables cover 9 tokens"):
        generate(t, [1, 2], [MaxGram(BigramTable(np.full(9, -1)))], k=[[2]], max_new_tokens=3)


def test_maxgram_must_be_last(fam):
    t, ds = fam
    with pytest.raises(CSDraftingError, match="last"):
        generate(t, [1, 2], [MaxGram(), ds[0]], k=[[1, 2], [0, 2]], max_new_tokens=3)


def test_empty_prompt_and_bad_lengths(fam):
    t, _ = fam
    with pytest.raises(CSDraftingError, match="prompt is empty"):
        generate(t, [], max_new_tokens=3)
    for n in (0, -2):
        with pytest.raises(CSDraftingError, match="max_new_tokens"):
            generate(t, [1, 2], max_new_tokens=n)
    with pytest.raises(CSDraftingError, match="outside the target's vocabulary"):
        generate(t, [1, 99], max_new_tokens=2)


def test_prompt_longer_than_context():
    model = tiny.wrap(tiny.causal(0, ctx=32), "short-context")
    with pytest.raises(CSDraftingError, match="lower max_new_tokens to 12"):
        generate(model, list(range(3, 23)), max_new_tokens=20)
    with pytest.raises(CSDraftingError, match="shorten the prompt"):
        generate(model, [3] * 40, max_new_tokens=4)
    assert len(generate(model, list(range(3, 23)), max_new_tokens=12).tokens) <= 12


def test_text_prompt_needs_a_tokenizer(fam):
    t, _ = fam
    with pytest.raises(CSDraftingError, match="tokenizer"):
        generate(t, "hello", max_new_tokens=2)
