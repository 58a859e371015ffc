"""Max-Gram (MaG), the statistical bottom of the cascade (cs-drafting.md section 4).

It proposes the continuation of the LONGEST suffix of the current text that occurs earlier in the text
(earliest occurrence among the longest), extends the text with what it copied and searches again until it
has the requested number of tokens, and falls back to a bigram table when nothing matches.

The index is a suffix automaton built online over the token sequence: appending a token is amortized
O(1), the longest earlier-occurring suffix is the suffix link of the last state, and its earliest end
position is the state's `firstpos`. Every append records what it changed, so rolling back to a shorter
prefix undoes exactly those changes instead of rebuilding the index.
"""

from __future__ import annotations

from typing import Sequence

from .base import StatisticalDrafter
from ..sequences import common_prefix
from .bigram import BigramTable


class SuffixAutomaton:
    """Online suffix automaton over ints with an undo log per appended token."""

    def __init__(self) -> None:
        self.length = [0]
        self.link = [-1]
        self.next: list[dict[int, int]] = [{}]
        self.firstpos = [-1]
        self.last = 0
        self.text: list[int] = []
        self._undo: list[tuple[int, int, list[tuple]]] = []  # per token: (n_states, last, changes)

    def _new_state(self, length: int, link: int, nxt: dict[int, int], firstpos: int) -> int:
        self.length.append(length)
        self.link.append(link)
        self.next.append(nxt)
        self.firstpos.append(firstpos)
        return len(self.length) - 1

    def append(self, c: int) -> None:
        changes: list[tuple] = []
        n_states, old_last = len(self.length), self.last
        cur = self._new_state(self.length[self.last] + 1, -1, {}, len(self.text))
        p = self.last
        while p != -1 and c not in self.next[p]:
            changes.append(("next", p, c, None))
            self.next[p][c] = cur
            p = self.link[p]
        if p == -1:
            self.link[cur] = 0
        else:
            q = self.next[p][c]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = self._new_state(self.length[p] + 1, self.link[q], dict(self.next[q]), self.firstpos[q])
                while p != -1 and self.next[p].get(c) == q:
                    changes.append(("next", p, c, q))
                    self.next[p][c] = clone
                    p = self.link[p]
                changes.append(("link", q, None, self.link[q]))
                self.link[q] = clone
                self.link[cur] = clone
        self.last = cur
        self.text.append(c)
        self._undo.append((n_states, old_last, changes))

    def truncate(self, n: int) -> None:
        """Undo appends until the text has n tokens."""
        while len(self.text) > n:
            n_states, old_last, changes = self._undo.pop()
            for kind, s, key, old in reversed(changes):
                if kind == "next":
                    if old is None:
                        del self.next[s][key]
                    else:
                        self.next[s][key] = old
                else:
                    self.link[s] = old
            del self.length[n_states:], self.link[n_states:], self.next[n_states:], self.firstpos[n_states:]
            self.last = old_last
            self.text.pop()

    def longest_earlier_match(self) -> tuple[int, int]:
        """(length, end) of the longest suffix that also ends earlier, at its earliest earlier end.

        The suffix link of the last state is exactly the longest suffix whose end positions include more
        than the current one; its firstpos is the first of them. (0, -1) when even the last token is new.
        """
        if not self.text:
            return 0, -1
        s = self.link[self.last]
        return self.length[s], self.firstpos[s]


class MaxGram(StatisticalDrafter):
    """The Max-Gram drafter (the paper's bottom level). Deterministic: each proposed token's q is one-hot."""

    def __init__(self, bigram: BigramTable | None = None, name: str = "Max-Gram") -> None:
        self.bigram = bigram
        self.name = name
        self.index = SuffixAutomaton()
        self.stats_lookups = 0

    @property
    def vocab_size(self) -> int | None:  # type: ignore[override]
        return self.bigram.vocab_size if self.bigram is not None else None

    def sync(self, seq: Sequence[int]) -> None:
        """Make the index cover exactly `seq`, keeping the shared prefix."""
        keep = common_prefix(self.index.text, seq)
        self.index.truncate(keep)
        for t in seq[keep:]:
            self.index.append(int(t))

    def propose(self, seq: Sequence[int], n: int) -> list[int]:
        """Up to n tokens continuing `seq` (fewer only when neither a match nor a bigram exists)."""
        self.sync(seq)
        base = len(self.index.text)
        out: list[int] = []
        try:
            while len(out) < n:
                self.stats_lookups += 1
                length, end = self.index.longest_earlier_match()
                if length > 0:
                    text = self.index.text
                    take = text[end + 1 : min(len(text), end + 1 + n - len(out))]
                else:
                    nxt = self.bigram.next_token(self.index.text[-1]) if (self.bigram and self.index.text) else None
                    if nxt is None:
                        break
                    take = [nxt]
                for t in take:
                    self.index.append(t)
                    out.append(t)
        finally:
            self.index.truncate(base)
        return out
