"""What every executor returns, and the per-level numbers of a peer reconstructed from its forward passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ...cascade.metrics import GenerationMetrics, LevelMetrics

WARMUP_TEXT = "def fibonacci(n):\n"
WARMUP_TOKENS = 4


@dataclass
class Outcome:
    tokens: list[int]
    finish_reason: str
    metrics: GenerationMetrics
    config: dict


def review_passes(passes: Sequence[tuple[int, Sequence[int]]], full: Sequence[int], prompt_len: int) -> list[tuple[int, int]]:
    """(draft length, accepted) for each target forward pass, from what the pass was fed.

    `passes` holds (position of the first input token, input tokens) per forward pass; `full` is prompt +
    output. In a pass, the tokens at positions >= max(start + 1, prompt_len) are a draft: the first input
    token of a later pass is the target's own last token, and in a first pass that already carries a draft
    (transformers' assisted generation) the draft starts right after the prompt. A drafted token counts as
    accepted iff it and every draft token before it equal the output at its position (greedy review).
    Draft positions beyond the end of the output were never decided and are not counted.
    """
    out = []
    for start, tokens in passes:
        first = max(start + 1, prompt_len)
        draft = list(tokens[first - start :])
        draft = draft[: max(0, len(full) - first)]
        n = 0
        while n < len(draft) and draft[n] == full[first + n]:
            n += 1
        out.append((len(draft), n))
    return out


def _fill_target_level(lv: LevelMetrics, reviews: list[tuple[int, int]]) -> tuple[int, int]:
    drafted = accepted = 0
    for d, a in reviews:
        if d:
            lv.record_review(d, a)
        drafted += d
        accepted += a
    return drafted, accepted



def target_level(name: str, n_params: int, passes: Sequence[tuple[int, Sequence[int]]], seconds: float,
                 prompt: Sequence[int], tokens: Sequence[int]) -> tuple[LevelMetrics, int, int]:
    """A peer's target level from the forward passes it made (their reviews filled in), and the tokens its
    drafts offered and the target accepted."""
    t = LevelMetrics(0, name, "target", n_params)
    t.forward_passes = len(passes)
    t.tokens_evaluated = sum(len(p) for _, p in passes)
    t.seconds = seconds
    drafted, accepted = _fill_target_level(t, review_passes(passes, list(prompt) + list(tokens), len(prompt)))
    return t, drafted, accepted
