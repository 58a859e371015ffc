"""A confident statistical drafter: suffix matches with occurrence counts, and a calibrated confidence.

Max-Gram (the paper's bottom level) always proposes something: the continuation of the longest earlier
match, else a bigram guess. On a CPU target whose review of k tokens costs about k/2 passes, a guess that
is wrong most of the time costs more than it saves. This drafter proposes the same kind of tokens but
says how likely each one is to be accepted, so that the engine drafts only what pays
(cascade/planning.py):

- **request index**: for every context of 1..max_ngram tokens seen earlier in the prompt and the text
  so far, how often each next token followed it (SuffixDecoding, arXiv 2411.04975; llama.cpp's
  ngram-map-k with its min-hits gate). The longest context that occurred before proposes its most
  frequent continuation (ties: the most recent one); a context of max_ngram tokens that occurred in
  several places (a line a function repeats) proposes the continuation of the place whose match reaches
  furthest back, the copy the text is making (`longest_copy`): along the target's outputs of 20 held-out
  library-function edits that halved the long matches' misses (65 of 3,997 to 32), each of which had cost
  a long draft rejected at its first token.
- **store** (optional, `persist=True`): the same counts over the outputs of earlier generations of this
  object, for what a request has not seen itself.
- **bigram** (optional): the packaged bigram table, when neither has a match.

Each proposal falls in a feature bucket (source, match length, agreement of the occurrences), and its
confidence is the acceptance rate measured for that bucket along the target's own output on calibration
prompts (`calibrate`); `Calibration` holds those rates. The match length is measured past max_ngram, up
to `long_match` tokens, by comparing the text before the most recent occurrence with the text before the
current position: an output that copies a long span of its input (a code edit, an answer quoting a
document) reaches the long buckets, whose proposals are accepted nearly always, and the planner then
drafts long chains (llama.cpp's ngram-mod drafts 48-64 tokens after a 24-token match, or nothing).

Within a request the drafter also learns (`committed`): at every position the target commits, it compares
what it would have proposed first with what came, and lowers the confidence of that family of buckets
(source and match-length class) by the request's own shortfall against the calibration, shrunk towards
zero while the request has few observations. A request that keeps rejecting a kind of proposal stops being
offered it. A surplus does not raise a confidence above its calibrated rate (`learn_up`, off): the matches
that pass early in a request (an answer restating its question, a code edit copying the lines before its
first edit) say little about the ones after, where the text departs from its input. Replayed along 90
held-out outputs under three measured cost curves, raising confidence on a surplus cost 0.2-3.5% of the
speedup (geometric mean) and left the worst prompts at 0.58-0.80x of plain instead of 0.79-0.93x; measured
side by side on the real target, the two tied on average, with RAG and EditEval faster without it (README,
"Learning within a request").

The index and the store are updated in O(max_ngram) per token with an undo log, so proposing and rolling
back cost microseconds per token.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..files import atomic_write, read_json
from ..protocol import CSDraftingError
from ..sequences import common_prefix
from .base import Proposal, StatisticalDrafter
from .bigram import BigramTable
from .ngram_index import NgramCounts, match_length

REQUEST, STORE, BIGRAM = "req", "store", "bigram"


LENGTH_CLASSES = ((4, None), (6, "5-6"), (9, "7-9"), (15, "10-15"), (23, "16-23"), (31, "24-31"))


def length_class(n: int) -> str:
    """The match-length class of a bucket: 1..4 one by one, then ranges up to "32+"."""
    for top, name in LENGTH_CLASSES:
        if n <= top:
            return name or str(n)
    return "32+"


def bucket(source: str, n: int, count: int, total: int) -> str:
    """The feature bucket of a proposal: source, match length class, agreement of the occurrences."""
    if source == BIGRAM:
        return BIGRAM
    agree = "once" if total == 1 else "all" if count == total else "maj" if 2 * count >= total else "split"
    return f"{source}:{length_class(n)}:{agree}"


def family(key: str) -> str:
    """What in-request learning pools: source and a coarse length (short 1-4, mid 5-9, long 10+)."""
    if key == BIGRAM:
        return BIGRAM
    source, cls, _ = key.split(":")
    head = int(cls.split("-")[0].rstrip("+"))
    return f"{source}:{'short' if head <= 4 else 'mid' if head <= 9 else 'long'}"


# The most any proposal is trusted. Copies that have run 32+ tokens were accepted 98.8% of the time along the
# calibration texts, and in-request learning used to raise a copying request's confidence to 0.995; but that
# rate differs by workload (99.5% on library-function edits, 97.5% on short EditEval edits, where a copy breaks
# at every edited line), and one 31-token draft rejected at an edit point costs ~15 single steps on a CPU.
# Replaying the planner along the target's own outputs of 40 held-out code-edit prompts under three measured
# cost curves, a ceiling of 0.98 with a cap of 64 was the best trade (README, "Trusting a copy").
MAX_CONFIDENCE = 0.98

# How many earlier places of a long context the drafter compares to find the copy the text is making (a
# context repeated more often than this is boilerplate, where the newest places are as good as any).
OCCURRENCES = 16

# buckets of calibrations made before the long classes existed (one "10+" class)
_LEGACY = {cls: "10+" for cls in ("10-15", "16-23", "24-31", "32+")}


@dataclass
class Calibration:
    """Measured acceptance per feature bucket: bucket -> [accepted, proposed]."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def add(self, key: str, accepted: bool) -> None:
        c = self.counts.setdefault(key, [0, 0])
        c[0] += int(accepted)
        c[1] += 1

    def merge(self, other: "Calibration") -> "Calibration":
        out = Calibration({k: list(v) for k, v in self.counts.items()}, dict(self.meta))
        for k, (a, t) in other.counts.items():
            c = out.counts.setdefault(k, [0, 0])
            c[0] += a
            c[1] += t
        return out

    def rate(self, key: str) -> float:
        """Acceptance of a bucket, shrunk towards its source's pooled rate when the bucket is thin.

        A source the calibration never saw (e.g. a store or a bigram table it ran without) is not trusted:
        0, so cost-aware drafting never spends a review on it.
        """
        a, t = self.counts.get(key, (0, 0))
        if not t and key.count(":") == 2:  # a calibration from before the long classes: their "10+" class
            s, cls, agree = key.split(":")
            if cls in _LEGACY:
                a, t = self.counts.get(f"{s}:{_LEGACY[cls]}:{agree}", (0, 0))
        src = key.split(":", 1)[0]
        pa = sum(v[0] for k, v in self.counts.items() if k.split(":", 1)[0] == src)
        pt = sum(v[1] for k, v in self.counts.items() if k.split(":", 1)[0] == src)
        if pt == 0:
            return 0.0
        prior = (pa + 1) / (pt + 2)
        weight = 4.0  # pseudo-observations of the pooled rate
        return (a + weight * prior) / (t + weight)

    def table(self) -> list[tuple[str, int, int, float]]:
        return sorted(((k, a, t, self.rate(k)) for k, (a, t) in self.counts.items()), key=lambda r: r[0])

    def to_json(self) -> dict:
        return {"counts": self.counts, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        if not isinstance(d, dict) or not isinstance(d.get("counts"), dict):
            raise CSDraftingError("a suffix-drafter calibration is a JSON object with a 'counts' mapping")
        return cls({str(k): [int(v[0]), int(v[1])] for k, v in d["counts"].items()}, dict(d.get("meta", {})))

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls.from_json(read_json(path, "calibration file",
                                       f"make one with `csdrafting calibrate --out {path}` (or `csdrafting tune`)"))


class SuffixDrafter(StatisticalDrafter):
    """Suffix-match drafting with occurrence counts and calibrated confidence (see module docstring).

    max_ngram: longest context counted; min_count: a continuation must have followed its context at
    least this often (llama.cpp's min-hits); long_match: how far past max_ngram a match is measured (its
    length class decides the confidence of a copy); persist: keep a store of earlier outputs across
    requests (store_max_tokens bounds it: past that the oldest half is forgotten);
    min_chain_confidence: stop chaining once the product of the confidences so far falls below it;
    adapt_weight: pseudo-observations behind the calibration when a request's own outcomes lower a
    bucket family's confidence (0: no in-request learning); learn_up: let a surplus raise it too, up to
    max_confidence (replayed to lose: module docstring); bigram: fallback table; calibration:
    measured acceptance per bucket (None: confidences unknown, so the engine cannot trim the proposals
    and drafts them as K says); max_confidence: no proposal is trusted beyond it, calibrated or adapted
    (a copy ends where an edit begins, which no match length foresees: see `MAX_CONFIDENCE`);
    longest_copy: where the longest context occurred in several places, continue the one whose match
    reaches furthest back (the copy the text is making), measured to long_match; off: the most frequent
    continuation, its length measured only at its newest place (the behaviour until 2026-12-03).
    """

    def __init__(
        self,
        calibration: Calibration | None = None,
        bigram: BigramTable | None = None,
        max_ngram: int = 12,
        min_count: int = 1,
        persist: bool = False,
        min_chain_confidence: float = 0.05,
        name: str = "Suffix",
        store_max_tokens: int = 200_000,
        long_match: int = 64,
        adapt_weight: float = 8.0,
        max_confidence: float = MAX_CONFIDENCE,
        learn_up: bool = False,
        longest_copy: bool = True,
    ) -> None:
        if max_ngram < 1 or min_count < 1:
            raise CSDraftingError(f"max_ngram and min_count must be >= 1 (got {max_ngram}, {min_count})")
        if store_max_tokens < 1:
            raise CSDraftingError(f"store_max_tokens must be >= 1 (got {store_max_tokens})")
        if long_match < max_ngram:
            raise CSDraftingError(f"long_match must be >= max_ngram ({max_ngram}), got {long_match}")
        if not adapt_weight >= 0:
            raise CSDraftingError(f"adapt_weight must be >= 0 (got {adapt_weight})")
        if not 0 < max_confidence <= 1:
            raise CSDraftingError(f"max_confidence must be in (0, 1] (got {max_confidence})")
        self.max_confidence = float(max_confidence)
        self.learn_up = bool(learn_up)
        self.longest_copy = bool(longest_copy)
        self.calibration = calibration
        self.bigram = bigram
        self.max_ngram = max_ngram
        self.min_count = min_count
        self.min_chain_confidence = min_chain_confidence
        self.long_match = long_match
        self.adapt_weight = adapt_weight
        self.name = name
        self.index = NgramCounts(max_ngram)
        self.store = NgramCounts(max_ngram, undo=False) if persist else None
        # the store's outputs, oldest first: past store_max_tokens the oldest half is forgotten (the store is
        # rebuilt from the rest), so a long-running server's memory stays bounded (~1-2 kB per stored token)
        self.store_max_tokens = store_max_tokens
        self._stored: deque[list[int]] = deque()
        self._stored_tokens = 0
        self._prompt_len = 0
        self._rates: dict[str, float] = {}
        # in-request learning: bucket family -> [accepted, calibrated rate summed, observations]
        self._seen: dict[str, list[float]] = {}

    @property
    def vocab_size(self) -> int | None:  # type: ignore[override]
        return self.bigram.vocab_size if self.bigram is not None else None

    # ------------------------------------------------------------------------------------------ lifecycle
    def begin(self, prompt: Sequence[int]) -> None:
        """Index the prompt now (the engine calls this in its prefill phase) and forget the last request's
        outcomes."""
        self._prompt_len = len(prompt)
        self._seen = {}
        self.sync(prompt)

    def end(self, tokens: Sequence[int]) -> None:
        if self.store is None:
            return
        out = [int(t) for t in tokens[self._prompt_len :]][-self.store_max_tokens :]
        if not out:
            return
        self._stored.append(out)
        self._stored_tokens += len(out)
        if self._stored_tokens > self.store_max_tokens:
            while self._stored_tokens > self.store_max_tokens // 2 and len(self._stored) > 1:
                self._stored_tokens -= len(self._stored.popleft())
            self.store = NgramCounts(self.max_ngram, undo=False)
            for old in self._stored:
                self._store_one(old)
        else:
            self._store_one(out)

    def _store_one(self, out: list[int]) -> None:
        self.store.new_segment()  # the store must not join one output to the next
        self.store.extend(out)

    def sync(self, seq: Sequence[int]) -> None:
        keep = common_prefix(self.index.text, seq)
        self.index.truncate(keep)
        self.index.extend(seq[keep:])

    def committed(self, seq: Sequence[int]) -> None:
        """The target committed `seq` (prompt + output so far): at each new output position, learn whether
        this drafter's first proposal there was the token that came."""
        keep = common_prefix(self.index.text, seq)
        self.index.truncate(keep)
        learn = self.calibration is not None and self.adapt_weight > 0
        for t in seq[keep:]:
            t = int(t)
            if learn and len(self.index.text) >= self._prompt_len:
                nxt = self.next_token()
                if nxt is not None:
                    key = nxt[1]
                    s = self._seen.setdefault(family(key), [0.0, 0.0, 0.0])
                    s[0] += nxt[0] == t
                    s[1] += self._rate(key)
                    s[2] += 1
            self.index.append(t)

    # ------------------------------------------------------------------------------------------ proposing
    def next_token(self, prev: tuple[str, int, int] | None = None) -> tuple[int, str, tuple[str, int, int]] | None:
        """The proposal after the index's current text: (token, feature bucket, (source, pos, length)).

        `prev` is what the same call returned for the token before (inside a chain): a copy that goes on
        from the next position extends its match by one instead of measuring it again.
        """
        text = self.index.text
        for source, counts, min_n in ((REQUEST, self.index, 1), (STORE, self.store, 2)):
            if counts is None:
                continue
            hit = counts.lookup_at(text, self.min_count, min_n)
            if hit is None:
                continue
            n, tok, c, tot, pos = hit
            if n == self.max_ngram and self.longest_copy:  # which copy does the text make, and how long is it?
                if prev is not None and prev[0] == source == REQUEST and prev[2] >= n:  # the chain's copy goes on
                    pos = prev[1] + 1  # (in the request's own text, which grows with the chain: a store's does not)
                    n = min(self.long_match, prev[2] + 1)
                else:
                    pos, n = self._longest_copy(counts, text, tok)
                tok = counts.text[pos]
                c = counts.counts[tuple(text[-self.max_ngram:])].get(tok, 0)
            elif n == self.max_ngram and counts.text[pos] == tok:  # as before longest_copy: the newest place
                if prev is not None and prev[0] == source and prev[1] + 1 == pos:
                    n = min(self.long_match, max(n, prev[2] + 1))
                else:
                    n = match_length(counts.text, counts.start if counts is self.store else 0, pos, text, n,
                                     self.long_match)
            return tok, bucket(source, n, c, tot), (source, pos, n)
        if self.bigram is not None and text:
            nxt = self.bigram.next_token(text[-1])
            if nxt is not None:
                return nxt, BIGRAM, (BIGRAM, -1, 0)
        return None

    def _longest_copy(self, counts: NgramCounts, text: list[int], tok: int) -> tuple[int, int]:
        """(position, match length) of the earlier occurrence of the text's last max_ngram tokens whose match
        reaches furthest back (up to long_match), among the newest `OCCURRENCES`. Ties keep the most frequent
        continuation `tok`, then the newest. A context that occurred in two places (a line the text repeats)
        continues the copy the text is making, not the most recent or most frequent one. The context was
        counted, so it has at least one occurrence."""
        start = counts.start if counts is self.store else 0
        places = ((p, match_length(counts.text, start, p, text, self.max_ngram, self.long_match))
                  for p in counts.occurrences(text, OCCURRENCES))
        return max(places, key=lambda pm: (pm[1], counts.text[pm[0]] == tok))  # max keeps the first (newest) of equals

    def _rate(self, key: str) -> float:
        r = self._rates.get(key)
        if r is None:
            r = self._rates[key] = self.calibration.rate(key)
        return r

    def confidence(self, key: str) -> float | None:
        """The calibrated acceptance of a bucket, lowered by this request's own shortfall in its family (and
        raised by a surplus only with `learn_up`)."""
        if self.calibration is None:
            return None
        r = self._rate(key)
        s = self._seen.get(family(key))
        if s is not None:
            shift = (s[0] - s[1]) / (s[2] + self.adapt_weight)
            r = max(0.0, r + (shift if self.learn_up else min(0.0, shift)))
        return min(self.max_confidence, r)

    def propose_scored(self, seq: Sequence[int], n: int) -> Proposal:
        self.sync(seq)
        base = len(self.index.text)
        out = Proposal()
        chain = 1.0
        prev = None
        try:
            while len(out) < n:
                nxt = self.next_token(prev)
                if nxt is None:
                    break
                tok, key, prev = nxt
                conf = self.confidence(key)
                out.tokens.append(tok)
                out.confidence.append(conf)
                self.index.append(tok)
                chain *= 1.0 if conf is None else conf
                if chain < self.min_chain_confidence:
                    break  # a later token could add at most `chain` expected tokens: not worth proposing
        finally:
            self.index.truncate(base)
        return out

    def propose(self, seq: Sequence[int], n: int) -> list[int]:
        return self.propose_scored(seq, n).tokens

    # ------------------------------------------------------------------------------------------ calibrating
    def calibrate(self, texts: Iterable[tuple[Sequence[int], Sequence[int]]], meta: dict | None = None) -> Calibration:
        """Acceptance per bucket along reference texts: (prompt, the target's own output) pairs.

        Under greedy review a deterministic token is accepted iff it equals the target's next token, and a
        chained proposal is reviewed only if the tokens before it were accepted, i.e. it sees exactly the
        reference text; so the first proposal at every position of the reference is the whole sample. The
        texts are walked in order and, with a store, each output is stored after its walk, as in serving.
        """
        cal = Calibration(meta=dict(meta or {}))
        for prompt, output in texts:
            self.begin(prompt)
            for t in output:
                nxt = self.next_token()
                if nxt is not None:
                    cal.add(nxt[1], nxt[0] == t)
                self.index.append(int(t))
            self.end(list(prompt) + list(output))
        self.index.truncate(0)
        return cal


DEFAULT_CALIBRATION_NAME = "suffix-calibration.json"


def default_calibration_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / DEFAULT_CALIBRATION_NAME


def default_calibration() -> Calibration:
    """The packaged calibration: measured along the default target's greedy output on calibration-split
    prompts (`csdrafting calibrate` rebuilds it; its meta says how it was made)."""
    return Calibration.load(default_calibration_path())
