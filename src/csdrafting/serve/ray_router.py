"""Conversation affinity: a Ray Serve request router that sends a conversation's next turn to the replica that
served its last one.

A chat's next turn repeats the whole conversation so far, so its text begins with the previous turn's.
Sent to the replica that served that turn, it finds the models' KV caches already holding the shared
prefix (`--reuse-prefix`: only the new part is evaluated) and a suffix drafter whose store
(`--suffix-persist`) holds the earlier answer. Ray's default router (power of two choices) knows nothing
of prompts and splits a conversation across replicas at random.

The index (PrefixIndex) is kept by each router (one per handle, i.e. per front replica), bounded in
memory. Affinity yields to load: when the preferred replica has more requests in flight than the least
busy other one by more than `max_imbalance` (default 0: waiting behind a whole generation costs more
than re-reading a conversation), or is full, the request goes where Ray's own rule would send it.
Answers never depend on the routing (every replica runs the same cascade, and prefix reuse changes no
output), only their cost does.
"""

from __future__ import annotations

import json
import random
from collections import Counter, OrderedDict, deque
from typing import Any, Hashable

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

ROUTE_KEY = "route_key"  # the keyword argument through which the front hands the router a request's text


def conversation_text(path: str, body: bytes) -> str | None:
    """The text a request continues: the prompt, or the chat messages in order; None if not a generation."""
    if not path.endswith("completions"):
        return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # the replica answers 400; any replica will do
    if not isinstance(obj, dict):
        return None
    if path.endswith("chat/completions"):
        messages = obj.get("messages")
        if not isinstance(messages, list):
            return None
        parts = []
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
                parts.append(f"\x1e{m.get('role')}\x1f{text}")
        return "".join(parts)
    prompt = obj.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


class PrefixIndex:
    """The replica that last served each earlier request, found from any later text that begins with that
    request's whole text (a conversation's next turn does; a request that only shares a template or a
    system prompt with it does not, and goes where the load says).

    Texts are cut into blocks under chained hashes (an LRU bounded in blocks); the block in which a text
    ends keeps the hash of its remainder, so a lookup walks the blocks of the new text once.
    """

    ROOT = None  # the "block" before the first one: texts shorter than a block end there

    def __init__(self, block_chars: int = 16, capacity: int = 200_000, max_blocks: int = 4096, ends_per_block: int = 64) -> None:
        self.block = block_chars
        self.capacity = capacity
        self.max_blocks = max_blocks  # beyond them a text's tail is summarized by one hash
        self.ends_per_block = ends_per_block
        self._ends: OrderedDict[Hashable, dict[tuple[int, int], Hashable] | None] = OrderedDict()

    def _chain(self, text: str) -> list[int]:
        out, h = [], 0
        for i in range(min(len(text) // self.block, self.max_blocks)):
            h = hash((h, text[i * self.block : (i + 1) * self.block]))
            out.append(h)
        return out

    def record(self, text: str, owner: Hashable) -> None:
        chain = self._chain(text)
        for h in chain:
            self._ends.setdefault(h, None)  # a block some text passes through (no dict: most blocks end none)
            self._ends.move_to_end(h)
        rest = text[len(chain) * self.block :]
        last = chain[-1] if chain else self.ROOT
        ends = self._ends.get(last) or {}
        self._ends[last] = ends
        ends.pop((len(rest), hash(rest)), None)
        ends[(len(rest), hash(rest))] = owner  # the latest owner, as the newest entry
        while len(ends) > self.ends_per_block:
            del ends[next(iter(ends))]
        while len(self._ends) > self.capacity:
            self._ends.popitem(last=False)

    def lookup(self, text: str) -> tuple[Hashable | None, int]:
        """(replica of the longest earlier request whose whole text begins `text`, that length); (None, 0)."""
        best: tuple[Hashable | None, int] = (None, 0)
        for i, h in enumerate([self.ROOT, *self._chain(text)]):
            if h not in self._ends and h is not self.ROOT:
                break
            start = i * self.block
            for (n, rest), owner in (self._ends.get(h) or {}).items():
                if start + n <= len(text) and start + n >= best[1] and hash(text[start : start + n]) == rest:
                    best = (owner, start + n)
        return best


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve request router: a conversation's next turn goes to the replica of its last turn, and a new
    conversation to the replica that started the fewest of the recent ones; both only while that replica is
    not busier than the rest (by more than max_imbalance). Otherwise: the power of two choices, as Ray's."""

    def initialize_state(self, block_chars: int = 16, capacity_blocks: int = 200_000, max_imbalance: int = 0,
                         window: int = 64, **_: Any) -> None:
        self._index = PrefixIndex(block_chars, capacity_blocks)
        self._max_imbalance = max_imbalance
        self._starts: deque[ReplicaID] = deque(maxlen=window)  # the replicas of the latest new conversations

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        text = _text_of(pending_request)
        if text:
            owner, _ = self._index.lookup(text)
            if owner is not None:
                preferred = [r for r in candidate_replicas if r.replica_id == owner]
            else:  # a new conversation: spread conversations, so that each replica holds few at a time
                started = Counter(self._starts)
                fewest = min(started[r.replica_id] for r in candidate_replicas)
                preferred = [r for r in candidate_replicas if started[r.replica_id] == fewest]
            preferred = [r for r in preferred if not self._overloaded(r, candidate_replicas)]
            if preferred:
                rest = [r for r in candidate_replicas if r not in preferred]
                return [preferred, _two(rest)] if rest else [preferred]
        return [_two(candidate_replicas)]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        text = _text_of(pending_request)
        if text:
            if self._index.lookup(text)[0] is None:
                self._starts.append(replica_id)
            self._index.record(text, replica_id)

    def _overloaded(self, preferred: RunningReplica, candidates: list[RunningReplica]) -> bool:
        cache = self.replica_queue_len_cache
        mine = cache.get(preferred.replica_id)
        if mine is None:
            return False
        if mine >= preferred.max_ongoing_requests:
            return True
        others = [q for r in candidates if r is not preferred and (q := cache.get(r.replica_id)) is not None]
        return bool(others) and mine - min(others) > self._max_imbalance


def _text_of(pending_request: PendingRequest | None) -> str | None:
    return pending_request.kwargs.get(ROUTE_KEY) if pending_request is not None else None


def _two(replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Two at random (Ray picks the less busy of them): the power of two choices."""
    return random.sample(replicas, 2) if len(replicas) > 2 else list(replicas)
