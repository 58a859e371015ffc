"""The suffix drafter's index: next-token counts after every context of a growing text, with undo, and the
length of the copied span a match continues (drafters/suffix.py)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from ..protocol import CSDraftingError


class NgramCounts:
    """Next-token counts after every context of 1..max_n tokens of a growing text, with undo.

    `last[key]` is the position in `text` of the most recent continuation of context `key`. `start` marks
    where the current segment begins: contexts never reach before it (a store of several outputs keeps
    them in one text, but no context joins one output to the next). `earlier[pos]` links the continuation
    at `pos` of a max_n-token context to that context's previous continuation (-1: none, or a shorter
    context), so `occurrences` walks every place a long context occurred, newest first, at one int per token.
    """

    def __init__(self, max_n: int, undo: bool = True) -> None:
        self.max_n = max_n
        self.text: list[int] = []
        self.start = 0
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}
        self.last: dict[tuple[int, ...], int] = {}
        self.earlier: list[int] = []
        self._undo: list[list[tuple[tuple[int, ...], int | None]]] | None = [] if undo else None

    def new_segment(self) -> None:
        """Later tokens start a new text: no context spans the boundary."""
        self.start = len(self.text)

    def append(self, t: int) -> None:
        text, counts, last = self.text, self.counts, self.last
        pos = len(text)
        changes = []
        top = min(self.max_n, pos - self.start)
        for n in range(1, top + 1):
            key = tuple(text[-n:])
            d = counts.get(key)
            if d is None:
                d = counts[key] = {}
            d[t] = d.get(t, 0) + 1
            before = last.get(key)
            changes.append((key, before))
            last[key] = pos
        # `before` is the max_n-token context's previous continuation when the loop reached max_n
        self.earlier.append(before if top == self.max_n and before is not None else -1)
        text.append(t)
        if self._undo is not None:
            self._undo.append(changes)

    def extend(self, tokens: Iterable[int]) -> None:
        for t in tokens:
            self.append(int(t))

    def truncate(self, n: int) -> None:
        """Undo appends until the text has n tokens."""
        if self._undo is None:
            raise CSDraftingError("this n-gram index keeps no undo log")
        counts, last = self.counts, self.last
        while len(self.text) > n:
            t = self.text.pop()
            self.earlier.pop()
            for key, prev in self._undo.pop():
                d = counts[key]
                c = d[t] - 1
                if c:
                    d[t] = c
                else:
                    del d[t]
                    if not d:
                        del counts[key]
                if prev is None:
                    del last[key]
                else:
                    last[key] = prev
        self.start = min(self.start, len(self.text))

    def lookup_at(
        self, context: Sequence[int], min_count: int = 1, min_n: int = 1
    ) -> tuple[int, int, int, int, int] | None:
        """(n, token, count, total, pos) for the longest context suffix of >= min_n tokens seen before, or
        None. The token is the most frequent continuation (ties: the most recent); it must have been seen
        at least min_count times, else the next shorter context is tried. pos is the position in `text` of
        the context's most recent continuation (which may be another token than the proposed one)."""
        for n in range(min(self.max_n, len(context)), min_n - 1, -1):
            key = tuple(context[-n:])
            d = self.counts.get(key)
            if not d:
                continue
            best = max(d.values())
            if best < min_count:
                continue
            pos = self.last[key]
            recent = self.text[pos]
            tok = recent if d.get(recent) == best else max(d, key=d.__getitem__)
            return n, tok, best, sum(d.values()), pos
        return None

    def occurrences(self, context: Sequence[int], limit: int) -> Iterator[int]:
        """Positions in `text` that continued the last max_n tokens of `context` (at most `limit`, newest
        first); nothing when the context is shorter than max_n or never occurred."""
        if len(context) < self.max_n:
            return
        pos = self.last.get(tuple(context[-self.max_n:]), -1)
        while pos >= 0 and limit > 0:
            yield pos
            pos = self.earlier[pos]
            limit -= 1

    def lookup(self, context: Sequence[int], min_count: int = 1, min_n: int = 1) -> tuple[int, int, int, int] | None:
        """(n, token, count, total) as `lookup_at`, without the position."""
        hit = self.lookup_at(context, min_count, min_n)
        return None if hit is None else hit[:4]


def match_length(src: Sequence[int], src_start: int, pos: int, text: Sequence[int], n: int, cap: int) -> int:
    """How far the match of the last n tokens of `text` with the n tokens before src[pos] reaches back
    (at most `cap`, never before src_start): the length of the copied span the proposal continues."""
    i, j = pos - n - 1, len(text) - n - 1
    while n < cap and i >= src_start and j >= 0 and src[i] == text[j]:
        n += 1
        i -= 1
        j -= 1
    return n
