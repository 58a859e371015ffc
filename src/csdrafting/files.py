"""Writing a file so that no reader ever sees half of it: `<name>.partial` first, renamed into place when
complete (a rename within a folder is atomic). An interrupted write leaves the old file, never a torn one."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .protocol import CSDraftingError


def partial_path(path: Path) -> Path:
    """Where a write of `path` goes until it is complete."""
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yields the temporary path to write; on success renames it to `path` (fsync'd first if asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes, fsync: bool = False) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def read_json(path: str | Path, what: str, missing: str = "") -> Any:
    """The JSON in `path`; a CSDraftingError naming `what` the file is (and `missing`: how to make one)."""
    path = Path(path)
    if not path.is_file():
        raise CSDraftingError(f"{what} {path} does not exist{'; ' + missing if missing else ''}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CSDraftingError(f"{what} {path} is not valid JSON: {exc}") from None
