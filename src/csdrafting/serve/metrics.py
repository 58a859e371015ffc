"""Per-response `timings` and the server's Prometheus counters, both derived from GenerationMetrics.

Names follow the peers so that existing dashboards read them: vLLM's spec-decode counters
(`spec_decode_num_drafts`, `spec_decode_num_draft_tokens`, `spec_decode_num_accepted_tokens`,
`spec_decode_num_accepted_tokens_per_pos`), request/token counters as vLLM and llama.cpp name them, and
llama.cpp's per-response `timings` (`draft_n`, `draft_n_accepted`, `predicted_per_second`). Beyond
them: the same counts for every level of the cascade.

The spec-decode counters describe what the TARGET reviewed: a draft is one target review of a non-empty
draft, whichever levels filled it. Each counter is the sum of the matching `timings` field over all
finished requests (the same function computes both).
"""

from __future__ import annotations

import threading
from collections import Counter

from ..cascade.metrics import GenerationMetrics, LevelMetrics, add_counts

NS = "csdrafting:"


def spec_counts(m: GenerationMetrics) -> tuple[int, int, int, list[int]]:
    """(drafts, draft tokens, accepted tokens, accepted per draft position) as the target reviewed them."""
    t = m.levels[0]
    drafts = t.reviewed_by_position[0] if t.reviewed_by_position else 0
    return drafts, sum(t.reviewed_by_position), sum(t.accepted_by_position), list(t.accepted_by_position)


def _level(lv: LevelMetrics) -> dict:
    return {
        "level": lv.level,
        "name": lv.name,
        "kind": lv.kind,
        "forward_passes": lv.forward_passes,
        "tokens_evaluated": lv.tokens_evaluated,
        "ms": lv.seconds * 1000,
        "proposals": lv.proposals,
        "drafted": lv.drafted,  # tokens this level put into drafts that were then reviewed
        "accepted": lv.accepted,  # ... and accepted by the level above
        "acceptance": lv.acceptance,
        "reviews": lv.reviews,  # drafts this level reviewed
        "reviewed_by_position": list(lv.reviewed_by_position),
        "accepted_by_position": list(lv.accepted_by_position),
    }


def timings(m: GenerationMetrics, prompt_n: int, queue_s: float) -> dict:
    """llama.cpp's `timings` object, extended per cascade level.

    As in llama.cpp, prompt_ms is the prefill and predicted_ms the decoding after it. The engine prefills
    all of the prompt but its last token apart (that one goes into the first review), so prompt_ms
    covers prompt_n - 1 tokens.
    """
    drafts, draft_n, accepted, per_pos = spec_counts(m)
    ms = m.decode_seconds * 1000
    return {
        "prompt_n": prompt_n,
        "prompt_ms": m.prefill_seconds * 1000,
        "prompt_per_second": (prompt_n - 1) / m.prefill_seconds if prompt_n > 1 and m.prefill_seconds > 0 else None,
        "predicted_n": m.new_tokens,
        "predicted_ms": ms,
        "predicted_per_token_ms": ms / m.new_tokens if m.new_tokens else None,
        "predicted_per_second": m.decode_tokens_per_second,
        "queue_ms": queue_s * 1000,
        "target_steps": m.target_steps,
        "draft_count": drafts,
        "draft_n": draft_n,
        "draft_n_accepted": accepted,
        "draft_accepted_by_position": per_pos,
        "tokens_per_target_pass": m.tokens_per_target_pass,
        "levels": [_level(lv) for lv in m.levels],
    }


class ServerMetrics:
    """Counters since the server started, rendered in the Prometheus text format (version 0.0.4)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.generation_seconds = 0.0
        self.success: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.drafts = 0
        self.draft_tokens = 0
        self.accepted_tokens = 0
        self.accepted_per_pos: list[int] = []
        self.levels: dict[int, LevelMetrics] = {}

    def finished(self, reason: str, m: GenerationMetrics | None, prompt_n: int) -> None:
        with self._lock:
            self.success[reason] += 1
            if m is None:
                return
            self.prompt_tokens += prompt_n
            self.generation_tokens += m.new_tokens
            self.generation_seconds += m.seconds
            drafts, draft_n, accepted, per_pos = spec_counts(m)
            self.drafts += drafts
            self.draft_tokens += draft_n
            self.accepted_tokens += accepted
            add_counts(self.accepted_per_pos, per_pos)
            for lv in m.levels:
                self.levels.setdefault(lv.level, LevelMetrics(lv.level, lv.name, lv.kind, lv.n_params)).add(lv)

    def rejected(self, reason: str) -> None:
        with self._lock:
            self.rejections[reason] += 1

    def failed(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def render(self, running: int, waiting: int) -> str:
        out: list[str] = []
        model = f'model_name="{_escape(self.model_name)}"'

        def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {NS}{name} {help_}")
            out.append(f"# TYPE {NS}{name} {kind}")
            for labels, value in samples:
                lab = ",".join(x for x in (model, labels) if x)
                out.append(f"{NS}{name}{{{lab}}} {_num(value)}")

        with self._lock:
            family("num_requests_running", "gauge", "Requests being generated (at most 1: one engine).", [("", running)])
            family("num_requests_waiting", "gauge", "Requests waiting in the FIFO queue.", [("", waiting)])
            family("request_success_total", "counter", "Finished requests by finish reason (abort: the client left).",
                   [(f'finished_reason="{r}"', n) for r, n in sorted(self.success.items())])
            family("request_rejected_total", "counter", "Requests refused before they were queued (503).",
                   [(f'reason="{r}"', n) for r, n in sorted(self.rejections.items())])
            family("request_failure_total", "counter", "Requests that failed inside the engine.",
                   [(f'reason="{r}"', n) for r, n in sorted(self.failures.items())])
            family("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", [("", self.prompt_tokens)])
            family("generation_tokens_total", "counter", "Generated tokens.", [("", self.generation_tokens)])
            family("generation_seconds_total", "counter", "Seconds the engine spent generating.", [("", self.generation_seconds)])
            family("spec_decode_num_drafts_total", "counter", "Non-empty drafts the target reviewed.", [("", self.drafts)])
            family("spec_decode_num_draft_tokens_total", "counter", "Draft tokens the target reviewed.", [("", self.draft_tokens)])
            family("spec_decode_num_accepted_tokens_total", "counter", "Draft tokens the target accepted.",
                   [("", self.accepted_tokens)])
            family("spec_decode_num_accepted_tokens_per_pos_total", "counter",
                   "Draft tokens the target accepted, by position in the draft (0 = first).",
                   [(f'position="{i}"', n) for i, n in enumerate(self.accepted_per_pos)])
            lv = sorted(self.levels.items())

            def lab(i: int, t: LevelMetrics) -> str:
                return f'level="{i}",level_model="{_escape(t.name)}",level_kind="{t.kind}"'

            family("cascade_level_drafted_tokens_total", "counter",
                   "Tokens a level put into drafts that its reviewer (the level above) then reviewed.",
                   [(lab(i, t), t.drafted) for i, t in lv])
            family("cascade_level_accepted_tokens_total", "counter",
                   "Tokens a level drafted that its reviewer accepted (acceptance = accepted / drafted).",
                   [(lab(i, t), t.accepted) for i, t in lv])
            family("cascade_level_forward_passes_total", "counter", "Forward passes of a level's model.",
                   [(lab(i, t), t.forward_passes) for i, t in lv if t.kind != "statistical"])
            family("cascade_level_tokens_evaluated_total", "counter", "Tokens a level's model evaluated.",
                   [(lab(i, t), t.tokens_evaluated) for i, t in lv if t.kind != "statistical"])
            family("cascade_level_seconds_total", "counter", "Seconds spent in a level.", [(lab(i, t), t.seconds) for i, t in lv])
            family("cascade_level_proposals_total", "counter", "Calls of a level as the bottom proposer.",
                   [(lab(i, t), t.proposals) for i, t in lv])
            family("cascade_level_reviews_total", "counter", "Drafts a level reviewed.",
                   [(lab(i, t), t.reviews) for i, t in lv if t.reviews])
            family("cascade_level_reviewed_tokens_per_pos_total", "counter",
                   "Draft tokens a level reviewed, by position in the draft.",
                   [(f'{lab(i, t)},position="{p}"', n) for i, t in lv for p, n in enumerate(t.reviewed_by_position)])
            family("cascade_level_accepted_tokens_per_pos_total", "counter",
                   "Draft tokens a level accepted as reviewer, by position in the draft.",
                   [(f'{lab(i, t)},position="{p}"', n) for i, t in lv for p, n in enumerate(t.accepted_by_position)])
        return "\n".join(out) + "\n"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} from Prometheus text (the tests check the counters with it)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset()
        if rest:
            parts = []
            for item in _split_labels(rest.rstrip("}")):
                k, v = item.split("=", 1)
                parts.append((k, v[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")))
            labels = frozenset(parts)
        out[(name, labels)] = float(value)
    return out


def _split_labels(s: str) -> list[str]:
    items, cur, quoted, esc = [], "", False, False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        items.append(cur)
    return items
