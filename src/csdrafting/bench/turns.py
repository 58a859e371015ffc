"""One unit's generations: a prompt's turns run by one method, and what its record says about them.

A conversation (Spec-Bench's MT-Bench questions: two user turns) is one unit. Turn k+1's prompt is the chat
template applied to the user turns so far, each followed by the method's OWN answer (`Render`), so every
method answers the same questions after its own words, as a user's conversation goes. Engine methods run
all turns on one Cascade (EngineExecutor.conversation: the KV caches and the drafters' index of turn 1
serve turn 2); executors without conversations (the peers) run each turn from a cold start.

Timing: every turn records end-to-end seconds (prefill included) and decode-only seconds (the prompt's
prefill excluded); a unit's figures are sums over its turns (tokens/s = total tokens / total seconds, as
Spec-Bench's speed.py computes them). The run's `timing` only chooses which of the two is the headline
(`seconds`, `tokens_per_second`: the draft-length choice and the results tables).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

from ..cascade.metrics import GenerationMetrics
from ..exactness import IDENTICAL, MISMATCH, TIE
from ..protocol import CSDraftingError

DIVERGENT = "divergent"  # differs from its baseline, not examined (a peer's own code and backend)

E2E, DECODE = "e2e", "decode"
TIMINGS = (DECODE, E2E)

# ids of turn len(answers) + 1, from the unit's prompt and the method's own answers (token ids) so far
Render = Callable[[object, Sequence[Sequence[int]]], list[int]]


@dataclass
class Turn:
    prompt: list[int]
    outcome: object  # executors.Outcome
    verdict: str | None = None  # against the baseline's same turn; None: not compared
    divergence: dict | None = None


def run_turns(executor, method, params: dict, prompt, base: dict | None, max_new: int, render: Render | None) -> list[Turn]:
    """Every turn of `prompt` (a runner.PromptIds) by `method`, then each compared with the baseline's.

    Turn k is compared only when every earlier turn was identical to the baseline's (else the prompts
    differ); the oracle is offered the baseline's turn k as its reference under the same condition (an
    empty one otherwise: it then drafts nothing). Divergences are examined after all turns ran: examining
    moves the target's cache, which a later turn reuses.
    """
    n = max(1, len(prompt.turns))
    base_turns = turns_of(base) if base is not None else []
    session = executor.conversation(method, params) if hasattr(executor, "conversation") else None
    out: list[Turn] = []
    same = base is not None
    for k in range(n):
        if k == 0:
            ids = list(prompt.ids)
        elif render is None:
            raise CSDraftingError(f"{prompt.dataset}/{prompt.id} has {n} turns: execute() needs a render for them")
        else:
            ids = render(prompt, [t.outcome.tokens for t in out])
        ref = base_turns[k]["tokens"] if same and k < len(base_turns) else (None if base is None else [])
        o = session.turn(ids, max_new, ref) if session else executor.run(method, params, ids, max_new, ref)
        out.append(Turn(ids, o))
        same = same and k < len(base_turns) and o.tokens == base_turns[k]["tokens"]
    judge(executor, out, base)
    return out


def judge(executor, turns: Sequence[Turn], base: dict | None) -> None:
    """Set each turn's verdict against the baseline's same turn (`base`: its record; None: not compared).
    A turn is compared only while every earlier one was identical (else their prompts differ). The bench
    calls this after the turns ran, or later, once a baseline that ran after them exists (runner.execute)."""
    base_turns = turns_of(base) if base is not None else []
    for k, t in enumerate(turns):
        if base is None or k >= len(base_turns) or any(u.verdict != IDENTICAL for u in turns[:k]):
            break
        t.verdict, t.divergence = classify(executor, t.prompt, base_turns[k], t.outcome.tokens, k)


def classify(executor, prompt: list[int], base: dict | None, tokens: list[int],
             turn: int = 0) -> tuple[str | None, dict | None]:
    """(exactness verdict, divergence details) of one output against its baseline's (a record or a turn;
    `turn`: its number in a conversation, from 0).

    None when there is no baseline to compare with; IDENTICAL when equal; otherwise the executor's own
    `examine` (engine methods: the target's logits at the first differing token) decides TIE or MISMATCH,
    and an executor that cannot examine (peers) yields DIVERGENT.
    """
    if base is None:
        return None, None
    if tokens == base["tokens"]:
        return IDENTICAL, None
    examine = getattr(executor, "examine", None)
    if examine is None:
        return DIVERGENT, None
    d = examine(prompt, base["tokens"], tokens, turn=turn) if turn else examine(prompt, base["tokens"], tokens)
    return d.verdict, {**d.to_json(), "describe": d.describe()}


def turns_of(rec: dict) -> list[dict]:
    """A record's turns: its `turns` list, or the record itself (one turn, the shape before conversations)."""
    return rec.get("turns") or [rec]


def merged(metrics: Sequence[GenerationMetrics]) -> GenerationMetrics:
    """The metrics of several turns as one: counts and seconds summed (routing decisions too), levels merged
    level by level."""
    levels = copy.deepcopy(metrics[0].levels)
    for m in metrics[1:]:
        for mine, other in zip(levels, m.levels):
            mine.add(other)
    routes: dict = {}
    for m in metrics:
        for k, v in m.routes.items():
            routes[k] = routes.get(k, 0) + v
    return GenerationMetrics(levels, new_tokens=sum(m.new_tokens for m in metrics), seconds=sum(m.seconds for m in metrics),
                             target_steps=sum(m.target_steps for m in metrics),
                             prefill_seconds=sum(m.prefill_seconds for m in metrics), routes=routes)


def timing_fields(m: GenerationMetrics, timing: str) -> dict:
    """Both timings of a generation, and the headline pair (`seconds`, `tokens_per_second`) by `timing`."""
    decode = timing == DECODE
    return {
        "seconds": m.decode_seconds if decode else m.seconds,
        "tokens_per_second": m.decode_tokens_per_second if decode else m.tokens_per_second,
        "e2e_seconds": m.seconds, "prefill_seconds": m.prefill_seconds, "decode_seconds": m.decode_seconds,
        "e2e_tokens_per_second": m.tokens_per_second, "decode_tokens_per_second": m.decode_tokens_per_second,
    }


def overall(turns: Sequence[Turn]) -> tuple[str | None, dict | None]:
    """A unit's verdict: identical when every turn was; else the first differing turn's (with its number)."""
    for k, t in enumerate(turns):
        if t.verdict is None:
            return None, None
        if t.verdict != IDENTICAL:
            return t.verdict, None if t.divergence is None else {**t.divergence, "turn": k + 1}
    return IDENTICAL, None


def record_fields(turns: Sequence[Turn], timing: str) -> dict:
    """What a record says about its generations: tokens, finish, timings, metrics, exactness, and for a
    conversation the per-turn figures (`turns`) with totals over them at the top level."""
    metrics = merged([t.outcome.metrics for t in turns])
    md = metrics.to_dict()
    verdict, divergence = overall(turns)
    last = turns[-1].outcome
    rec = {
        "prompt_tokens": len(turns[0].prompt), "tokens": [x for t in turns for x in t.outcome.tokens],
        "finish_reason": last.finish_reason, "new_tokens": md["new_tokens"], **timing_fields(metrics, timing),
        "tokens_per_target_pass": md["tokens_per_target_pass"],
        "standardized_walltime_improvement": md["standardized_walltime_improvement"],
        "matches_baseline": None if verdict is None else verdict == IDENTICAL, "metrics": md, "config": last.config,
        "exactness": verdict,
    }
    if divergence is not None:
        rec["divergence"] = divergence
    if len(turns) > 1:
        rec["turns"] = [_turn_fields(t, timing) for t in turns]
    return rec


def _turn_fields(t: Turn, timing: str) -> dict:
    m = t.outcome.metrics
    target = m.levels[0]
    out = {"prompt_tokens": len(t.prompt), "tokens": list(t.outcome.tokens), "finish_reason": t.outcome.finish_reason,
           "new_tokens": m.new_tokens, **timing_fields(m, timing),
           # what the target evaluated as the executor counts it (engine methods: the prompt tokens it
           # prefilled too, so a kept cache makes a later turn's smaller; peers: decoding only)
           "target_tokens_evaluated": target.tokens_evaluated, "target_passes": target.forward_passes,
           "exactness": t.verdict}
    if t.divergence is not None:
        out["divergence"] = t.divergence
    return out


def rate(rec: dict, timing: str) -> float | None:
    """tokens/s of a record by `timing` (E2E or DECODE); None where the record lacks it (a record made
    before both were kept holds only its run's own timing)."""
    key = f"{timing}_tokens_per_second"
    if key in rec:
        return rec[key]
    return rec["tokens_per_second"] if rec.get("timing", E2E) == timing else None


def verdict_of(r: dict, base: dict) -> str:
    """The record's exactness verdict against `base`; records written before examination existed count a
    difference as a mismatch (engine) or an unexamined divergence (peers)."""
    return IDENTICAL if r["tokens"] == base["tokens"] else differing_verdict(r)


def differing_verdict(r: dict) -> str:
    """The verdict of a record that differs from its baseline: as examined, else (an older record) a
    mismatch for engine methods and an unexamined divergence for peers."""
    v = r.get("exactness")
    return v if v in (TIE, MISMATCH, DIVERGENT) else MISMATCH if r.get("family") == "engine" else DIVERGENT
