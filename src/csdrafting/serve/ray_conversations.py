"""Multi-turn chat traffic against `csdrafting serve --replicas`: does a conversation's next turn land on the
replica that served its last one, and what does that save?

    python -m csdrafting.serve.ray_conversations --url http://127.0.0.1:8000/v1 --conversations 8 --turns 4

Each conversation sends its turns one after the other (the whole history every time, as chat clients do);
the conversations run concurrently. Reported: the affinity hit rate (turns after the first served by the
replica of the previous turn, read from the x-csdrafting-replica header), latency of those later turns,
and how many tokens the target evaluated for them (with --reuse-prefix a hit re-evaluates only the new
part of the prompt). A measurement command: nothing asserts its numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field

from .loadtest import PROMPTS, _percentile

FOLLOW_UPS = ["Now add type hints.", "Add a docstring.", "Write a test for it.", "Make it faster.", "Explain it briefly."]


@dataclass
class Turn:
    conversation: int
    turn: int
    replica: str
    seconds: float
    prompt_tokens: int
    target_evaluated: int  # tokens the target evaluated for this request (prompt part included)
    hit: bool | None = None  # same replica as the previous turn (None for a first turn)


@dataclass
class Report:
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        later = [t for t in self.turns if t.turn > 0]
        lat = sorted(t.seconds for t in later)
        return {
            "requests": len(self.turns) + len(self.errors), "errors": len(self.errors),
            "later_turns": len(later), "affinity_hits": sum(t.hit for t in later),
            "hit_rate": sum(t.hit for t in later) / len(later) if later else None,
            "later_turn_latency_p50_s": _percentile(lat, 50), "later_turn_latency_p95_s": _percentile(lat, 95),
            "later_turn_prompt_tokens": sum(t.prompt_tokens for t in later),
            "later_turn_target_tokens_evaluated": sum(t.target_evaluated for t in later),
        }


def run(url: str, model: str, conversations: int, turns: int, max_tokens: int, think: float = 0.0,
        timeout: float = 600.0) -> Report:
    """`think` seconds pass between an answer and the conversation's next turn (a person reading it)."""
    import openai

    report = Report()
    lock = threading.Lock()

    def conversation(ci: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=timeout)
        messages = [{"role": "user", "content": f"Complete this Python code (#{ci}): {PROMPTS[ci % len(PROMPTS)]}"}]
        last = None
        for ti in range(turns):
            if ti:
                time.sleep(think)
            t0 = time.perf_counter()
            try:
                raw = client.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                                       max_tokens=max_tokens, temperature=0)
            except Exception as exc:  # counted, reported, never hidden
                with lock:
                    report.errors.append(f"conversation {ci} turn {ti}: {type(exc).__name__}: {exc}")
                return
            out = raw.parse()
            replica = raw.headers.get("x-csdrafting-replica", "?")
            target = out.model_extra["timings"]["levels"][0]
            turn = Turn(ci, ti, replica, time.perf_counter() - t0, out.usage.prompt_tokens, target["tokens_evaluated"],
                        None if last is None else replica == last)
            with lock:
                report.turns.append(turn)
            last = replica
            messages = messages + [{"role": "assistant", "content": out.choices[0].message.content},
                                   {"role": "user", "content": FOLLOW_UPS[ti % len(FOLLOW_UPS)]}]

    threads = [threading.Thread(target=conversation, args=(i,)) for i in range(conversations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m csdrafting.serve.ray_conversations", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model id (default: the first of GET /v1/models)")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--think", type=float, default=0.0, help="seconds between an answer and the next turn")
    args = p.parse_args(argv)
    import openai

    model = args.model or openai.OpenAI(base_url=args.url, api_key="unused").models.list().data[0].id
    report = run(args.url, model, args.conversations, args.turns, args.max_tokens, args.think)
    print(json.dumps(report.summary(), indent=1))
    for e in report.errors:
        print(e, file=sys.stderr)
    return 0 if not report.errors else 1


if __name__ == "__main__":
    sys.exit(main())
