"""Conversation affinity: a Ray Serve request router that sends a request to the replica that last served
the longest prefix of its conversation.

A chat's next turn repeats the whole conversation so far, so its text begins with the previous turn's.
Sent to the replica that served that turn, it finds the models' KV caches already holding the shared
prefix (`--reuse-prefix`: only the new part is evaluated) and a suffix drafter whose store
(`--suffix-persist`) holds the earlier answer. Ray's default router (power of two choices) knows nothing
of prompts and splits a conversation across replicas at random.

The index is kept by each router (one per handle, i.e. per front replica) in blocks of characters under
chained hashes, bounded in memory. Affinity yields to load: when the preferred replica has more requests
in flight than the least busy other one by more than `max_imbalance`, or is full, the request goes where
Ray's own rule would send it. Answers never depend on the routing (every replica runs the same cascade,
and prefix reuse changes no output), only their cost does.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
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
    """Which replica last served each block-aligned prefix of a text (an LRU of chained block hashes)."""

    def __init__(self, block_chars: int = 16, capacity: int = 500_000, max_blocks: int = 4096) -> None:
        self.block = block_chars
        self.capacity = capacity
        self.max_blocks = max_blocks  # only the first blocks of very long texts are indexed
        self._owner: OrderedDict[int, Hashable] = OrderedDict()

    def _hashes(self, text: str) -> list[int]:
        out, h = [], 0
        for i in range(0, min(len(text) // self.block, self.max_blocks)):
            h = hash((h, text[i * self.block : (i + 1) * self.block]))
            out.append(h)
        return out

    def lookup(self, text: str) -> tuple[Hashable | None, int]:
        """(owner of the longest indexed prefix, its length in characters); (None, 0) when none is."""
        owner, n = None, 0
        for i, h in enumerate(self._hashes(text)):
            who = self._owner.get(h)
            if who is None:
                break
            owner, n = who, (i + 1) * self.block
        return owner, n

    def record(self, text: str, owner: Hashable) -> None:
        for h in self._hashes(text):
            self._owner[h] = owner
            self._owner.move_to_end(h)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve request router: conversation affinity first, power of two choices otherwise."""

    def initialize_state(self, block_chars: int = 16, capacity_blocks: int = 500_000, max_imbalance: int = 2, **_: Any) -> None:
        self._index = PrefixIndex(block_chars, capacity_blocks)
        self._max_imbalance = max_imbalance

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        text = _text_of(pending_request)
        owner, _ = self._index.lookup(text) if text else (None, 0)
        preferred = next((r for r in candidate_replicas if r.replica_id == owner), None)
        if preferred is not None and not self._overloaded(preferred, candidate_replicas):
            rest = [r for r in candidate_replicas if r is not preferred]
            return [[preferred], _two(rest)] if rest else [[preferred]]
        return [_two(candidate_replicas)]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        text = _text_of(pending_request)
        if text:
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
