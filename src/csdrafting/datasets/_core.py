"""What every prompt set shares: the item and prompt records, the split rule, and reading shipped files."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

from ..protocol import CSDraftingError

SPLITS = ("eval", "calibration", "all")


@dataclass(frozen=True)
class Item:
    """One item as a source gives it, before splitting and chat formatting.

    ``turns`` are the user turns in order (one for most sets; the raw completion text for HumanEval).
    """

    id: str
    turns: tuple[str, ...]
    category: str = ""
    group: str = ""
    reference: str = ""


@dataclass(frozen=True)
class Dataset:
    """A loadable prompt set: where its items come from and how they are split and ordered.

    ``split_key(id)`` names the set an item's split is hashed under (groups of one source share their
    source's key, so selecting a group never moves an item to another split). ``order`` arranges one
    split's items before ``limit`` applies (identity: file order).
    """

    name: str
    origin: str
    count: int
    chat: bool
    items: Callable[[], list[Item]]
    split_key: Callable[[str], str]
    order: Callable[[list[Item]], list[Item]] = list


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``text`` is exactly what is fed to the model (after any chat formatting).

    ``messages`` is the chat conversation of the first turn before formatting (``(("user", content),)``)
    for chat sets and ``None`` for raw completion sets. ``turns`` holds every user turn of a chat item (two
    for MT-Bench questions; later turns are asked after the model's own earlier answers, see
    :meth:`conversation`) and is empty for raw completion sets. ``category`` is the set's own category
    (MT-Bench/Spec-Bench category, MMLU subject); ``group`` the reporting group (a Spec-Bench group, else
    the source set's name). ``reference`` is what the set gives as the answer to the first turn where it
    has one; it is never part of ``text``.
    """

    dataset: str
    id: str
    text: str
    messages: tuple | None = None
    category: str = ""
    reference: str = ""
    group: str = ""
    turns: tuple[str, ...] = ()

    def conversation(self, answers: Sequence[str] = ()) -> list[dict]:
        """Chat messages for turn ``len(answers) + 1`` (see :func:`conversation`)."""
        if not self.turns:
            raise CSDraftingError(f"{self.dataset}/{self.id} is a raw completion prompt, not a conversation")
        return conversation(self.turns, answers, f"{self.dataset}/{self.id}")


def conversation(turns: Sequence[str], answers: Sequence[str] = (), where: str = "this item") -> list[dict]:
    """Chat messages for turn ``len(answers) + 1``: the user turns so far, each followed by the model's own
    answer from ``answers``, ending with the next user turn (render them with a chat template)."""
    if len(answers) >= len(turns):
        raise CSDraftingError(f"{where} has {len(turns)} turn(s); got {len(answers)} answers already")
    out: list[dict] = []
    for user, answer in zip(turns, answers):
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return out + [{"role": "user", "content": turns[len(answers)]}]


def split_hash(key: str, item_id: str) -> str:
    """``sha256(f"{key}:{id}")``, first 8 bytes big-endian, mod 4: 0 -> calibration, else eval."""
    h = int.from_bytes(hashlib.sha256(f"{key}:{item_id}".encode()).digest()[:8], "big")
    return "calibration" if h % 4 == 0 else "eval"


def read_shipped(relative: str) -> bytes:
    """Bytes of a file shipped in the package's ``data/`` folder (gunzipped when it ends in .gz)."""
    path = resources.files("csdrafting").joinpath("data", *relative.split("/"))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CSDraftingError(f"the package's data file {relative} is missing; reinstall csdrafting") from None
    return gzip.decompress(raw) if relative.endswith(".gz") else raw


def json_lines(raw: bytes, where: str) -> list[dict]:
    """The JSON objects of a JSON-lines file, blank lines skipped; a bad line is an error naming it."""
    out = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise CSDraftingError(f"{where} line {n} is not JSON: {exc}") from None
    return out
