"""Typed, validated configuration of a cascade and of sampling.

K is stored in ONE spelling inside the engine: cumulative, as the paper writes it (`k_11 = 5, k_12 = 19`:
the first drafter fills the draft up to 5 new tokens, the second extends it to 19). The authors' code
spells the same matrix in increments (`[[5, 14, 10], ...]`); `KMatrix.parse` converts, here and only here.
Row r is the reviewer at level r (0 = target), column c the drafter at level c + 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Sequence

from ..protocol import CSDraftingError

Spelling = Literal["cumulative", "increments"]

# Field names as config files, bench records and server requests spelled them before a rename -> today's.
LEGACY_FIELDS = {"maxgram_length": "bottom_length"}


@dataclass(frozen=True)
class KMatrix:
    """An m x m upper-triangular matrix of draft quotas, held cumulatively."""

    cumulative: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return len(self.cumulative)

    @classmethod
    def parse(cls, rows: "KMatrix | Sequence[Sequence[int]] | str", spelling: Spelling = "cumulative") -> "KMatrix":
        if isinstance(rows, KMatrix):
            return rows
        if isinstance(rows, str):
            try:
                rows = json.loads(rows)
            except json.JSONDecodeError as exc:
                raise CSDraftingError(f"K must be a JSON list of lists such as [[5,14],[0,10]]: {exc}") from None
        if spelling not in ("cumulative", "increments"):
            raise CSDraftingError(f"K spelling must be 'cumulative' or 'increments', not {spelling!r}")
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in rows):
            raise CSDraftingError("K must be a list of rows, e.g. [[5, 14], [0, 10]]")
        m = len(rows)
        if m == 0:
            raise CSDraftingError("K is empty; omit K for plain decoding, or give one row per drafter level")
        for r, row in enumerate(rows):
            if len(row) != m:
                raise CSDraftingError(f"K must be square ({m}x{m}, one row and column per drafter); row {r} has {len(row)} entries")
            for c, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise CSDraftingError(f"K[{r}][{c}] = {v!r}: entries must be non-negative integers")
                if c < r and v != 0:
                    raise CSDraftingError(
                        f"K[{r}][{c}] = {v}: K must be upper triangular (a reviewer only reviews drafts of smaller "
                        "drafters); set the entries below the diagonal to 0"
                    )
        out = []
        for r, row in enumerate(rows):
            vals = list(row[r:])
            if spelling == "increments":
                acc, cum = 0, []
                for v in vals:
                    acc += v
                    cum.append(acc)
            else:
                cum = vals
                for c in range(1, len(cum)):
                    if cum[c] < cum[c - 1]:
                        raise CSDraftingError(
                            f"K row {r} decreases ({cum[c - 1]} then {cum[c]}) but is read as cumulative (the paper's "
                            "spelling); if it lists increments as the authors' code does, say spelling='increments'"
                        )
            if cum[-1] <= 0 and r == 0:
                raise CSDraftingError(f"K row {r} asks for no draft tokens at all; give at least one drafter a quota")
            # a zero row r >= 1: drafter level r reviews nothing and drafts its share autoregressively
            # (a horizontal-only cascade)
            out.append(tuple([0] * r + cum))
        return cls(tuple(out))

    def increments(self) -> list[list[int]]:
        res = []
        for r, row in enumerate(self.cumulative):
            inc, prev = [0] * len(row), 0
            for c in range(r, len(row)):
                inc[c] = row[c] - prev
                prev = row[c]
            res.append(inc)
        return res

    def reviews(self, level: int) -> bool:
        """False when row `level` is all zero: that drafter drafts by itself instead of reviewing."""
        return level < self.size and self.cumulative[level][-1] > 0

    def quota(self, reviewer: int, drafter: int) -> int:
        """Cumulative draft length that `reviewer` wants filled once drafter level `drafter` is done."""
        return self.cumulative[reviewer][drafter - 1]

    def rows(self) -> list[list[int]]:
        """The cumulative rows as JSON lists (what config files and bench records hold)."""
        return [list(r) for r in self.cumulative]

    def to_json(self) -> dict:
        return {"spelling": "cumulative", "K": self.rows()}


@dataclass(frozen=True)
class SamplingConfig:
    """transformers-style generation arguments. do_sample=False (or temperature=0) is greedy."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.do_sample and not (self.temperature > 0):
            raise CSDraftingError(f"temperature must be > 0 when sampling (got {self.temperature}); use do_sample=False for greedy")
        if self.temperature < 0:
            raise CSDraftingError(f"temperature must be >= 0 (got {self.temperature})")
        if self.top_k < 0:
            raise CSDraftingError(f"top_k must be >= 0, 0 meaning off (got {self.top_k})")
        if not (0 < self.top_p <= 1):
            raise CSDraftingError(f"top_p must be in (0, 1] (got {self.top_p})")

    @property
    def greedy(self) -> bool:
        return not self.do_sample


@dataclass(frozen=True)
class CascadeConfig:
    """Which K and lenience drive the cascade. `k=None` with no drafters is plain decoding.

    lenience >= 1 applies to INTERMEDIATE reviewers only; the target always reviews with lenience 1, so the
    output stays exactly the target's (cs-drafting.md section 5). `bottom_length=None` lets the bottom
    (statistical) drafter fill whatever its quota asks; an integer makes it propose that many tokens per
    call (the authors used 10 for Max-Gram). It was called `maxgram_length` before any other statistical
    drafter existed; that spelling still loads (`LEGACY_FIELDS`) and still reads.

    dynamic=True turns on cost-aware drafting (cascade/planning.py): K becomes a cap, and each level drafts
    only as many tokens as its predicted acceptance pays for, given `costs`: one measured CostCurve per
    level, target first (None for statistical levels). route=True (with dynamic) adds per-step routing
    (cascade/routing.py): a reviewer skips a neural drafter whenever the levels below it are predicted to
    draft faster on their own. The output stays exact either way.
    """

    k: KMatrix | None = None
    lenience: float = 1.0
    bottom_length: int | None = None
    dynamic: bool = False
    costs: tuple | None = None  # tuple[CostCurve | None, ...], one per level
    route: bool = False

    def __post_init__(self) -> None:
        if not (self.lenience >= 1):
            raise CSDraftingError(f"lenience must be >= 1 (got {self.lenience}); 1 is the strict rule")
        if self.k is not None and not isinstance(self.k, KMatrix):
            raise CSDraftingError(f"k must be a KMatrix (KMatrix.parse reads rows and spellings), not {type(self.k).__name__}")
        n = self.bottom_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise CSDraftingError(f"bottom_length must be an integer >= 1 or None (got {n!r})")
        if not isinstance(self.dynamic, bool):
            raise CSDraftingError(f"dynamic must be true or false (got {self.dynamic!r})")
        if not isinstance(self.route, bool):
            raise CSDraftingError(f"route must be true or false (got {self.route!r})")
        if self.route and not self.dynamic:
            raise CSDraftingError("route needs dynamic drafting (measured costs decide the path): set dynamic too")

    @classmethod
    def make(
        cls,
        k: KMatrix | Sequence[Sequence[int]] | str | None = None,
        spelling: Spelling = "cumulative",
        lenience: float = 1.0,
        bottom_length: int | None = None,
        dynamic: bool = False,
        costs: Sequence | None = None,
        route: bool = False,
    ) -> "CascadeConfig":
        if k is not None and not isinstance(k, KMatrix):
            k = KMatrix.parse(k, spelling)
        return cls(k=k, lenience=float(lenience), bottom_length=bottom_length, dynamic=dynamic,
                   costs=tuple(costs) if costs is not None else None, route=route)

    @property
    def maxgram_length(self) -> int | None:
        """The old name of `bottom_length` (read-only), for code written before the rename."""
        return self.bottom_length

    @staticmethod
    def speculative(k: int) -> "CascadeConfig":
        """Classic speculative decoding: one drafter drafting k tokens autoregressively."""
        return CascadeConfig.make([[k]])

    def check_levels(self, n_drafters: int) -> None:
        if n_drafters == 0:
            if self.k is not None:
                raise CSDraftingError("K was given but there are no drafters; drop K for plain decoding")
            return
        if self.k is None:
            raise CSDraftingError(f"{n_drafters} drafter(s) need a {n_drafters}x{n_drafters} K matrix")
        if self.k.size != n_drafters:
            raise CSDraftingError(
                f"K is {self.k.size}x{self.k.size} but there are {n_drafters} drafters (Max-Gram counts as one): "
                f"K needs one row per reviewer above the bottom and one column per drafter, {n_drafters}x{n_drafters}"
            )


def default_k(n_drafters: int) -> KMatrix | None:
    """A reasonable starting point: each reviewer fills 4 tokens from the level below, Max-Gram 8.

    Use `csdrafting tune` to choose K for your hardware.
    """
    if n_drafters == 0:
        return None
    rows = []
    for r in range(n_drafters):
        row = [0] * n_drafters
        row[r] = 8 if r == n_drafters - 1 else 4
        rows.append(row)
    return KMatrix.parse(rows, "increments")
