"""Metrics of one generation, as data: per level, per draft position."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def add_counts(into: list[int], values: list[int]) -> None:
    """into += values, element-wise, growing `into` as needed (per-position counts)."""
    into.extend([0] * (len(values) - len(into)))
    for i, v in enumerate(values):
        into[i] += v


@dataclass
class LevelMetrics:
    """What one level of the cascade did during a generation.

    As a model: forward passes, tokens evaluated, seconds spent. As a reviewer: how many drafts it reviewed
    and, per draft position, how often that position existed and was accepted. As a source: how many of
    the tokens it emitted into a draft were then reviewed, and accepted, by the level above.
    """

    level: int
    name: str
    kind: str  # "target", "drafter" or "statistical"
    n_params: int
    forward_passes: int = 0  # reviews and proposals (the prompt's prefill passes are counted apart)
    tokens_evaluated: int = 0
    seconds: float = 0.0
    proposals: int = 0  # calls as the bottom proposer
    reviews: int = 0
    reviewed_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    dropped: int = 0  # proposed, but not drafted: cost-aware drafting judged them not worth their review
    prefill_passes: int = 0  # passes over the prompt before the first step (their tokens are in tokens_evaluated)
    prefill_seconds: float = 0.0  # the part of `seconds` those passes took

    def record_review(self, draft_len: int, n_accepted: int) -> None:
        self.reviews += 1
        grow = draft_len - len(self.reviewed_by_position)
        if grow > 0:
            self.reviewed_by_position.extend([0] * grow)
            self.accepted_by_position.extend([0] * grow)
        for i in range(draft_len):
            self.reviewed_by_position[i] += 1
        for i in range(n_accepted):
            self.accepted_by_position[i] += 1

    def add(self, other: "LevelMetrics") -> None:
        """Add another generation's counts of the same level (a server's totals since it started)."""
        for f in ("forward_passes", "tokens_evaluated", "seconds", "proposals", "reviews", "drafted", "accepted",
                  "dropped", "prefill_passes", "prefill_seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        add_counts(self.reviewed_by_position, other.reviewed_by_position)
        add_counts(self.accepted_by_position, other.accepted_by_position)

    @property
    def acceptance(self) -> float | None:
        """Share of the tokens this level drafted that its reviewer accepted."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def standardized_cost(self) -> int:
        """The paper's cost accounting: runs x parameter count (Max-Gram costs 0)."""
        return self.forward_passes * self.n_params


@dataclass
class GenerationMetrics:
    levels: list[LevelMetrics]
    new_tokens: int = 0
    seconds: float = 0.0  # end to end: the prompt's prefill and the decoding
    target_steps: int = 0  # iterations of the outer loop, each ending in one target forward pass
    prefill_seconds: float = 0.0  # bringing the prompt into every level's cache (and index)
    routes: dict = field(default_factory=dict)  # with routing: decisions taken ("direct", "via", "measure")

    @property
    def tokens_per_second(self) -> float:
        """End to end, as a user waits for it (prefill included)."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_seconds(self) -> float:
        return max(0.0, self.seconds - self.prefill_seconds)

    @property
    def decode_tokens_per_second(self) -> float:
        """Decoding alone, as llama.cpp's own timers print it (the prompt's prefill excluded)."""
        d = self.decode_seconds
        return self.new_tokens / d if d > 0 else 0.0

    @property
    def tokens_per_target_pass(self) -> float:
        t = self.levels[0].forward_passes
        return self.new_tokens / t if t else 0.0

    @property
    def standardized_cost(self) -> int:
        return sum(lv.standardized_cost for lv in self.levels)

    def standardized_walltime_improvement(self) -> float:
        """SWI: cost of plain decoding (one target run per token) over this run's standardized cost."""
        cost = self.standardized_cost
        return self.new_tokens * self.levels[0].n_params / cost if cost else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            tokens_per_second=self.tokens_per_second,
            decode_seconds=self.decode_seconds,
            decode_tokens_per_second=self.decode_tokens_per_second,
            tokens_per_target_pass=self.tokens_per_target_pass,
            standardized_cost=self.standardized_cost,
            standardized_walltime_improvement=self.standardized_walltime_improvement(),
        )
        for lv, dl in zip(self.levels, d["levels"]):
            dl["acceptance"] = lv.acceptance
        return d

    def table(self) -> str:
        """A plain-text per-level table for terminals."""
        head = f"{'level':<5} {'model':<40} {'passes':>7} {'tokens':>7} {'sec':>7} {'drafted':>8} {'accepted':>9} {'acc%':>6}"
        lines = [head, "-" * len(head)]
        for lv in self.levels:
            acc = f"{100 * lv.acceptance:.1f}" if lv.acceptance is not None else "-"
            passes = lv.forward_passes if lv.kind != "statistical" else lv.proposals
            lines.append(
                f"{lv.level:<5} {lv.name[:40]:<40} {passes:>7} {lv.tokens_evaluated:>7} {lv.seconds:>7.2f} "
                f"{lv.drafted:>8} {lv.accepted:>9} {acc:>6}"
            )
        lines.append(
            f"{self.new_tokens} new tokens in {self.seconds:.2f} s = {self.tokens_per_second:.2f} tok/s end to end "
            f"({self.decode_tokens_per_second:.2f} decoding, after a {self.prefill_seconds:.2f} s prefill); "
            f"{self.tokens_per_target_pass:.2f} tokens per target pass; "
            f"standardized walltime improvement {self.standardized_walltime_improvement():.2f}x"
        )
        return "\n".join(lines)
