"""Hashing, verified-stamps, atomic JSON writes and inter-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..files import atomic_write

CHUNK = 8 << 20  # 8 MiB: large enough that hashing runs at disk/SHA speed, small enough for RAM


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def sha256_file(path: Path, *, progress: bool = False, desc: str | None = None) -> str:
    """Stream a file through sha256 (constant memory), optionally with a tqdm bar."""
    h = hashlib.sha256()
    size = path.stat().st_size
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or f"sha256 {path.name}",
        disable=not progress, leave=False, file=sys.stderr,
    ) as bar:
        while n := f.readinto(buf):
            h.update(view[:n])
            bar.update(n)
    return h.hexdigest()


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON via ``.partial`` + fsync + ``os.replace`` so readers never see half a file."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", fsync=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when missing or unreadable (treated as absent)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def identity(path: Path) -> dict[str, int]:
    st = path.stat()
    # (size, mtime) is the key the brief asks for; the inode also changes whenever a file is replaced.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def write_stamp(path: Path, sha256: str, ident: dict[str, int] | None = None) -> bool:
    """Record that ``path`` (size, mtime, inode) hashed to ``sha256``.

    ``ident`` is the identity taken BEFORE hashing; if the file changed meanwhile nothing is written
    (the hash may belong to the old file) and False is returned.
    """
    now = identity(path)
    if ident is not None and ident != now:
        return False
    atomic_write_json(stamp_path(path), {**now, "sha256": sha256, "verified_at": time.time()})
    return True


def stamp_matches(path: Path, sha256: str) -> bool:
    """True when ``path`` is unchanged since it was last hashed and that hash was ``sha256``.

    This lets an unchanged multi-GB file skip re-hashing; any change of size or mtime forces a re-hash.
    """
    stamp = read_json(stamp_path(path))
    if stamp is None or stamp.get("sha256") != sha256:
        return False
    try:
        ident = identity(path)
    except OSError:
        return False
    return all(stamp.get(k) == v for k, v in ident.items())


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def file_lock(lock_file: Path, what: str, *, progress: bool = True) -> Iterator[None]:
    """Hold an exclusive fcntl lock so two processes never build the same file at once.

    flock locks belong to the open file description, so two threads of one process that each enter
    this context also exclude each other. The lock is released by the kernel if the process dies.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"csdrafting: waiting for another process that is building {what} ...", file=sys.stderr)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
