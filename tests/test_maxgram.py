"""Max-Gram: longest-suffix match, earliest occurrence, re-search in the extended text, bigram fallback,
and an index that stays consistent through rollbacks."""

import random

import numpy as np

from csdrafting import BigramTable, MaxGram
from csdrafting.drafters.maxgram import SuffixAutomaton


def brute_force_match(text):
    """(length, end) of the longest suffix that also ends earlier, at its earliest earlier end."""
    n = len(text)
    for length in range(n - 1, 0, -1):
        suffix = text[n - length:]
        for end in range(length - 1, n - 1):
            if text[end - length + 1: end + 1] == suffix:
                return length, end
    return 0, -1


def test_longest_match_prefers_longest_then_earliest():
    mg = MaxGram()
    #        0  1  2  3  4  5  6  7  8  9 10 11
    text = [1, 2, 3, 9, 2, 3, 7, 1, 2, 3, 8, 2, 3]
    # suffix [2, 3] occurs ending at 2, 5 and 10; [8, 2, 3] and [3, 2, 3]... do not occur earlier
    # -> the longest earlier match is [2, 3], earliest end 2, continuation text[3:] = 9, 2, 3, 7 ...
    assert mg.propose(text, 3) == [9, 2, 3]
    # a longer match wins over an earlier shorter one: [1, 2, 3] ends at 2 and 9
    assert mg.propose(text[:10], 2) == [9, 2]
    assert mg.propose([5, 6, 7, 1, 5, 6, 7, 2, 6, 7], 1) == [1]  # [6, 7] ends at 2 (earliest) and 6


def test_search_continues_in_extended_text():
    # copying [4, 5] after the match ends the available continuation; the next search runs on the text
    # extended by the copy, so the periodic pattern continues
    mg = MaxGram()
    assert mg.propose([4, 5, 4, 5], 6) == [4, 5, 4, 5, 4, 5]
    assert mg.propose([1, 2, 3, 1], 5) == [2, 3, 1, 2, 3]


def test_bigram_fallback_and_no_table():
    succ = np.full(10, -1, dtype=np.int32)
    succ[7] = 8
    succ[8] = 7
    mg = MaxGram(BigramTable(succ))
    # 7 never occurred before: the bigram says 8; then [7, 8]... 8 new too -> bigram 7; then 7 matches
    assert mg.propose([1, 2, 7], 4) == [8, 7, 8, 7]
    assert MaxGram().propose([1, 2, 7], 4) == []  # nothing matches, no table: propose nothing
    assert MaxGram(BigramTable(succ)).propose([1, 2, 9], 3) == []  # no successor for 9


def test_automaton_matches_brute_force_and_survives_rollback():
    rng = random.Random(0)
    sam = SuffixAutomaton()
    text = []
    for step in range(3000):
        if text and rng.random() < 0.2:
            n = rng.randrange(len(text) + 1)
            sam.truncate(n)
            del text[n:]
        else:
            t = rng.randrange(4)
            sam.append(t)
            text.append(t)
        assert sam.text == text
        if step % 7 == 0:
            assert sam.longest_earlier_match() == brute_force_match(text), text


def test_proposals_after_rollback_equal_a_fresh_index():
    rng = random.Random(1)
    live = MaxGram()
    seq = [rng.randrange(6) for _ in range(50)]
    for _ in range(200):
        cut = rng.randrange(1, len(seq) + 1)
        seq = seq[:cut] + [rng.randrange(6) for _ in range(rng.randrange(1, 8))]
        n = rng.randrange(1, 10)
        assert live.propose(seq, n) == MaxGram().propose(seq, n)
        assert live.index.text == seq  # proposals leave the index as it was
