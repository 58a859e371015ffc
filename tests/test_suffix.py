"""The suffix drafter on copies: match lengths past max_ngram, store segments, in-request learning.

An output that copies a long span of its input must reach the long length classes (whose proposals the
calibration trusts), a store must never join two outputs into one context, and a request whose own
outcomes contradict the calibration must move the confidence the planner sees, towards what happened.
"""

from __future__ import annotations

import random

import pytest

from csdrafting.drafters.suffix import (
    Calibration,
    MAX_CONFIDENCE,
    NgramCounts,
    SuffixDrafter,
    bucket,
    family,
    length_class,
    match_length,
)


def _cal(rates: dict[str, float], n: int = 1000) -> Calibration:
    cal = Calibration()
    for key, r in rates.items():
        cal.counts[key] = [int(n * r), n]
    return cal


def test_length_classes_cover_every_length_once():
    names = [length_class(n) for n in range(1, 80)]
    assert names[:4] == ["1", "2", "3", "4"] and names[4:6] == ["5-6", "5-6"]
    assert names[9] == "10-15" and names[15] == "16-23" and names[23] == "24-31" and names[31:] == ["32+"] * 48
    assert family("req:16-23:once") == "req:long" and family("store:5-6:all") == "store:mid"
    assert family("req:3:split") == "req:short" and family("bigram") == "bigram"


def _random_edits(idx: NgramCounts, rng: random.Random, alphabet: tuple[int, ...], steps: int):
    """Grow the index by random tokens, rolling it back to a random length one step in five; yield the text
    the index should hold after every step."""
    text: list[int] = []
    for _ in range(steps):
        if text and rng.random() < 0.2:
            keep = rng.randint(0, len(text))
            idx.truncate(keep)
            del text[keep:]
        else:
            t = rng.choice(alphabet)
            idx.append(t)
            text.append(t)
        yield text


def test_lookup_at_gives_the_most_recent_continuation_under_rollback():
    """Against brute force: the position returned is where the context's latest continuation sits."""
    idx = NgramCounts(4)
    for text in _random_edits(idx, random.Random(1), (1, 2, 3), 500):
        hit = idx.lookup_at(text)
        if hit is None:
            assert len(text) <= 1 or all(
                tuple(text[i:i + 1]) != tuple(text[-1:]) for i in range(len(text) - 1))
            continue
        n, tok, count, total, pos = hit
        ctx = text[-n:]
        latest = max(i + n for i in range(len(text) - n) if text[i:i + n] == ctx)
        assert pos == latest and idx.text[pos] == text[pos]
        assert idx.lookup(text) == (n, tok, count, total)


def test_match_length_measures_past_max_ngram():
    span = list(range(100, 140))  # 40 distinct tokens
    text = [1, 2] + span + [7, 8] + span[:30]  # the output has copied 30 tokens of the span so far
    pos = 2 + 30  # the copied span continues at span[30] in the prompt
    assert match_length(text, 0, pos, text, 12, 64) == 30
    assert match_length(text, 0, pos, text, 12, 20) == 20  # capped
    d = SuffixDrafter(_cal({"req:24-31:once": 0.9, "req:32+:once": 0.95}), max_ngram=12)
    prop = d.propose_scored(text, 5)
    assert prop.tokens == span[30:35]
    # the first proposal continues a 30-token copy, the third a 32-token one: confidence follows the class
    assert prop.confidence[0] == pytest.approx(0.9, abs=0.01) and prop.confidence[2] == pytest.approx(0.95, abs=0.01)
    assert d.index.text == text  # proposing leaves the index as it was


def test_occurrences_list_every_place_of_a_long_context_under_rollback():
    """Against brute force: every earlier continuation of the last max_n tokens, newest first, as the index
    grows and is rolled back."""
    idx = NgramCounts(3)
    checked = 0
    for text in _random_edits(idx, random.Random(2), (1, 2), 600):
        want = [i + 3 for i in range(len(text) - 3) if text[i:i + 3] == text[-3:]][::-1] if len(text) >= 3 else []
        assert list(idx.occurrences(text, 10_000)) == want
        assert list(idx.occurrences(text, 2)) == want[:2]
        checked += len(want) > 1
    assert checked > 50  # the walk was tested on contexts with several places, not just one


def test_a_long_context_in_two_places_continues_the_copy_being_made():
    """The 12-token line X occurs twice in the prompt, after A and after B; the output is copying A X: it
    continues with A's next token and its match counts from the start of A, though B's place is newer."""
    a, b, x = list(range(100, 120)), list(range(200, 220)), list(range(300, 312))
    prompt = a + x + [1, 2, 3] + b + x + [7, 8, 9]
    cal = _cal({"req:32+:once": 0.95, "req:10-15:maj": 0.5, "req:32+:maj": 0.9})
    d = SuffixDrafter(cal, max_ngram=12)
    d.begin(prompt)
    prop = d.propose_scored(prompt + a + x, 3)
    assert prop.tokens == [1, 2, 3]
    assert prop.confidence[0] == pytest.approx(0.9, abs=0.01)  # a 32-token copy; its two places split 1:1
    old = SuffixDrafter(cal, max_ngram=12, longest_copy=False)
    old.begin(prompt)
    assert old.propose(prompt + a + x, 1) == [7]  # the newest place (the old choice), which this text is not copying


def test_store_segments_never_join_two_outputs():
    d = SuffixDrafter(persist=True)
    for out in ([50, 51, 52], [53, 54, 55]):
        d.begin([1])
        d.end([1, *out])
    assert d.store.text == [50, 51, 52, 53, 54, 55]
    # "52 53" never occurred inside one output: no context spans the boundary
    assert d.store.lookup([9, 52], min_n=1) is None
    assert d.propose([9, 53, 54], 1) == [55]


def _request(drafter: SuffixDrafter, prompt: list[int], output: list[int]) -> None:
    drafter.begin(prompt)
    for i in range(1, len(output) + 1):
        drafter.committed(prompt + output[:i])


def test_a_request_that_rejects_a_family_stops_trusting_it():
    """The calibration says short matches are right 80% of the time; this request's output never continues
    them: after eight observations the confidence falls to half the calibration."""
    cal = _cal({f"req:{n}:{a}": 0.8 for n in (1, 2) for a in ("once", "all", "maj", "split")})
    d = SuffixDrafter(cal)
    prompt = list(range(1, 11))
    assert d.propose_scored(prompt + [1], 1).confidence[0] == pytest.approx(0.8, abs=0.01)
    out = [3, 5, 7, 9, 2, 4, 6, 8, 10]  # every 1-token match proposes its prompt successor, and is wrong
    _request(d, prompt, out)
    low = d.propose_scored(prompt + out + [1], 1).confidence[0]
    assert low == pytest.approx(0.8 - 0.8 * 8 / (8 + 8), abs=0.01)  # (hits - expected) / (seen + weight)
    # learning is per request: the next one starts from the calibration again
    d.begin(prompt)
    assert d.propose_scored(prompt + [1], 1).confidence[0] == pytest.approx(0.8, abs=0.01)
    # and can be switched off
    off = SuffixDrafter(cal, adapt_weight=0)
    _request(off, prompt, out)
    assert off.propose_scored(prompt + out + [1], 1).confidence[0] == pytest.approx(0.8, abs=0.01)


def test_a_surplus_raises_confidence_only_when_asked():
    """50-odd long matches, every one right, against a calibrated 60%: by default the request keeps the
    calibration's confidence (a surplus never raises it); with learn_up it is trusted more."""
    keys = [bucket("req", n, 1, 1) for n in range(10, 70)]
    cal = _cal({k: 0.6 for k in keys})
    span = list(range(100, 180))
    prompt = [1] + span + [2]
    out = span[:60]
    d, up = SuffixDrafter(cal, max_ngram=12), SuffixDrafter(cal, max_ngram=12, learn_up=True)
    for x in (d, up):
        _request(x, prompt, out)
    assert d.propose_scored(prompt + out, 4).confidence == [pytest.approx(0.6, abs=0.01)] * 4
    assert all(c > 0.75 for c in up.propose_scored(prompt + out, 4).confidence)


def test_no_proposal_is_trusted_beyond_max_confidence():
    """A calibration of 100% and a request that copies every token cannot push a confidence past the ceiling
    (a copy ends where an edit begins); a ceiling of 1 leaves the measured rates as they are."""
    keys = [bucket("req", n, 1, 1) for n in range(10, 70)]
    cal = Calibration({k: [1000, 1000] for k in keys})
    span = list(range(100, 180))
    prompt = [1] + span + [2]
    out = span[:60]
    capped, free = (SuffixDrafter(cal, max_ngram=12, learn_up=True),
                    SuffixDrafter(cal, max_ngram=12, max_confidence=1.0, learn_up=True))
    for d in (capped, free):
        _request(d, prompt, out)
    assert capped.propose_scored(prompt + out, 8).confidence == [MAX_CONFIDENCE] * 8
    assert all(c > 0.99 for c in free.propose_scored(prompt + out, 8).confidence)
    assert SuffixDrafter(cal, max_confidence=0.5).confidence(keys[0]) == 0.5


def test_bad_settings_are_refused():
    from csdrafting.protocol import CSDraftingError

    for bad in (0, -0.1, 1.01, float("nan")):
        with pytest.raises(CSDraftingError, match="max_confidence"):
            SuffixDrafter(max_confidence=bad)

    with pytest.raises(CSDraftingError, match="long_match"):
        SuffixDrafter(max_ngram=12, long_match=8)
    with pytest.raises(CSDraftingError, match="adapt_weight"):
        SuffixDrafter(adapt_weight=-1)


def test_old_calibrations_with_one_long_class_still_apply():
    """Calibrations written before the long classes had one "10+" class: its rate serves all of them."""
    cal = _cal({"req:10+:once": 0.93, "req:3:once": 0.5})
    assert cal.rate("req:24-31:once") == pytest.approx(0.93, abs=0.01)
    assert cal.rate("req:32+:once") == pytest.approx(0.93, abs=0.01)


def test_a_store_copy_chained_past_the_store_end_stays_inside_it():
    """A chain that copies a stored output to its last token, where that output's tail also occurred earlier
    in the store: the next proposal comes from a place the store holds, never past its end."""
    span = list(range(400, 430))
    d = SuffixDrafter(_cal({"store:32+:once": 0.95, "store:16-23:once": 0.9}), max_ngram=12, persist=True)
    d.begin([1])
    d.end([1, *span, *span[:20]])  # the stored output repeats the span's head: its last 12 tokens recur
    prop = d.propose_scored([2, *span[:5]], 40)
    assert prop.tokens[:25] == span[5:30]
    assert all(t in span for t in prop.tokens)
