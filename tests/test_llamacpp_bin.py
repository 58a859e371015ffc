"""llama.cpp's own programs as bench peers, without the programs: command lines, parsing of their real
printed output (fixtures captured from `llama-speculative-simple` built by `llamacpp_bin`), the build's
bookkeeping, and the executor's records. One smoke test runs the real program when it is built."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from csdrafting.bench import llamacpp_bin as lb
from csdrafting.bench.methods import LLAMA_BIN, build_methods
from csdrafting.protocol import CSDraftingError
from csdrafting.spec import CascadeSpec

FIXTURES = Path(__file__).parent / "fixtures" / "llamacpp_bin"
T = "qwen2.5-coder-1.5b:Q4_K_M"
D = "qwen2.5-coder-0.5b:Q4_K_M"


def _args(**kw) -> lb.PeerArgs:
    base = dict(model=Path("/m/t.gguf"), prompt_text="def f(x):\n    \\n", max_new_tokens=64, threads=2, n_ctx=1024)
    return lb.PeerArgs(**{**base, **kw})


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("method,spec_type", sorted(lb.SPEC_TYPES.items()))
def test_command_is_greedy_same_prompt_same_threads(method, spec_type):
    a = _args(draft_model=Path("/m/d.gguf"))
    argv = lb.command(Path("/bin"), method, a)
    assert _opt(argv, "-m") == "/m/t.gguf"
    # the prompt goes in verbatim: no escape processing (a literal backslash-n in code stays two characters)
    assert _opt(argv, "-p") == a.prompt_text and "--no-escape" in argv
    assert _opt(argv, "-t") == _opt(argv, "-tb") == "2" and _opt(argv, "-c") == "1024" and _opt(argv, "-ngl") == "0"
    assert _opt(argv, "--temp") == "0" and _opt(argv, "--top-k") == "1"
    if method == "llama-cpp-plain":
        assert argv[0] == "/bin/llama-completion" and "--spec-type" not in argv
        assert _opt(argv, "-n") == "64" and "-no-cnv" in argv and "--no-display-prompt" in argv
    else:
        assert argv[0] == "/bin/llama-speculative-simple" and _opt(argv, "--spec-type") == spec_type
        # the program stops after MORE than -n tokens, so -n is one less than the tokens wanted
        assert _opt(argv, "-n") == "63"
    if method == "llama-cpp-draft-simple":
        assert _opt(argv, "-md") == "/m/d.gguf" and _opt(argv, "-td") == "2"
    else:
        assert "-md" not in argv


def test_command_errors_and_extra_flags():
    with pytest.raises(CSDraftingError, match="needs a draft model"):
        lb.command(Path("p"), "llama-cpp-draft-simple", _args())
    with pytest.raises(CSDraftingError, match="unknown llama.cpp peer"):
        lb.command(Path("p"), "llama-cpp-eagle", _args())
    with pytest.raises(CSDraftingError, match="max_new_tokens"):
        lb.command(Path("p"), "llama-cpp-plain", _args(max_new_tokens=0))
    argv = lb.command(Path("p"), "llama-cpp-ngram-map-k", _args(extra=("--spec-ngram-map-k-min-hits", "2")))
    assert argv[-2:] == ["--spec-ngram-map-k-min-hits", "2"]


def _fixture(name: str) -> tuple[str, str, dict]:
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return (FIXTURES / f"{name}.stdout").read_text(), (FIXTURES / f"{name}.stderr").read_text(), meta


@pytest.mark.parametrize("name", ["plain", "ngram-map-k", "draft-simple"])
def test_parse_real_output(name):
    out, err, meta = _fixture(name)
    plain = name == "plain"
    o = lb.parse_output(out, err, None if plain else meta["prompt_text"], plain=plain)
    assert o.new_tokens == meta["new_tokens"]
    assert o.decode_seconds == pytest.approx(meta["decode_seconds"])
    assert o.decode_speed == pytest.approx(meta["decode_speed"])
    assert o.prompt_tokens == meta["prompt_tokens"] and o.prefill_seconds == pytest.approx(meta["prefill_seconds"])
    assert o.text == meta["text"]
    assert o.counters == meta["counters"]
    if name == "draft-simple":
        assert o.counters["n_drafted"] > 0 and o.new_tokens > meta["max_new_tokens"]  # it overshoots -n
    if plain:
        assert o.counters["eval_runs"] == meta["new_tokens"] - 1 and o.ended_by_eos is False


def test_parse_rejects_output_without_timing_or_prompt():
    out, err, meta = _fixture("ngram-map-k")
    with pytest.raises(CSDraftingError, match="decoded"):
        lb.parse_output(out, "no timing here\n", meta["prompt_text"])
    with pytest.raises(CSDraftingError, match="does not start with the prompt"):
        lb.parse_output(out, err, "something else entirely")
    with pytest.raises(CSDraftingError, match="prompt eval time"):
        lb.parse_output("text", "no timing here\n", plain=True)


def test_plain_timing_lines_and_end_of_text():
    err = ("llama_perf_context_print:        load time =     512.00 ms\n"
           "llama_perf_context_print: prompt eval time =     900.00 ms /   110 tokens (    8.18 ms per token)\n"
           "llama_perf_context_print:        eval time =    4000.00 ms /    40 runs   (  100.00 ms per token)\n")
    o = lb.parse_output("    return a + b\n [end of text]\n\n\n", err, plain=True)  # as llama-completion prints it
    assert o.text == "    return a + b\n" and o.ended_by_eos is True
    assert (o.prompt_tokens, o.prefill_seconds, o.new_tokens, o.eval_seconds) == (110, 0.9, 41, 4.0)
    assert o.decode_speed == pytest.approx(10.0) and o.decode_seconds == pytest.approx(4.1) and o.load_ms == 512.0


def test_plain_program_end_to_end_counts_each_token_once(monkeypatch):
    """llama-completion's prompt pass yields the first token and its eval runs the rest: end to end is
    prefill + eval as printed (0.9 + 4.0 s); decode only prices all 41 tokens at the eval rate (4.1 s)."""
    ex, _, _ = _executor(monkeypatch, "ngram-map-k")
    err = ("llama_perf_context_print: prompt eval time =     900.00 ms /   110 tokens (    8.18 ms per token)\n"
           "llama_perf_context_print:        eval time =    4000.00 ms /    40 runs   (  100.00 ms per token)\n")
    text = "x" * 41
    monkeypatch.setattr(lb, "run_peer", lambda argv, prompt_text, timeout=0: lb.PeerRun(
        lb.parse_output(text + "\n\n", err, plain=True), 0.9 + 4.0 + 1.5, argv))
    m = {x.name: x for x in build_methods(CascadeSpec(target=T, drafters=[D], k=[[4]]), methods=(),
                                           peers=("llama-cpp-plain",))}["llama-cpp-plain"]
    o = ex.run(m, m.resolve(), [ord("a")] * 110, 41, None)
    assert o.metrics.seconds == pytest.approx(4.9) and o.metrics.decode_seconds == pytest.approx(4.1)
    assert o.metrics.decode_tokens_per_second == pytest.approx(10.0) and o.metrics.tokens_per_second == pytest.approx(41 / 4.9)
    assert o.config["load_and_exit_seconds"] == pytest.approx(1.5)


def test_timing_lines_parse_exactly():
    err = ("main: encoded  117 tokens in    0.912 seconds, speed:  128.289 t/s\n"
           "main: decoded   64 tokens in    5.125 seconds, speed:   12.488 t/s\n"
           "main: n_drafted = 30\nmain: n_accept  = 12\n"
           "llama_perf_context_print:        load time =     640.47 ms\n")
    o = lb.parse_output("\n\nabc def\n\n\n\n", err, "abc")
    assert (o.prompt_tokens, o.prefill_seconds, o.new_tokens, o.decode_seconds, o.decode_speed) == (117, 0.912, 64, 5.125, 12.488)
    assert o.counters == {"n_drafted": 30, "n_accept": 12} and o.load_ms == 640.47 and o.text == " def"


def test_methods_and_baseline_of_the_family():
    spec = CascadeSpec(target=T, drafters=[D], k=[[4]])
    ms = build_methods(spec, methods=(), peers=("llama-cpp-ngram-map-k", "llama-cpp-draft-simple"))
    assert [m.name for m in ms] == ["llama-cpp-plain", "llama-cpp-draft-simple", "llama-cpp-ngram-map-k"]
    assert all(m.family == LLAMA_BIN and m.baseline == "llama-cpp-plain" for m in ms)
    assert ms[1].drafters == (D,) and ms[2].drafters == ()
    assert [m.name for m in build_methods(spec, methods=(), peers=("llama-cpp-plain",))] == ["llama-cpp-plain"]
    with pytest.raises(CSDraftingError, match="needs a neural drafter"):
        build_methods(CascadeSpec(target=T, drafters=["maxgram"], k=[[4]]), methods=(), peers=("llama-cpp-draft-simple",))


# ------------------------------------------------------------------------------------------------ build bookkeeping


def _sdist(path: Path) -> Path:
    """A stand-in sdist: a vendored llama.cpp with a CMakeLists.txt, plus files that must not be unpacked."""
    tb = path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        for name, data in (("llama_cpp_python-9.9.9/vendor/llama.cpp/CMakeLists.txt", b"project(x)\n"),
                           ("llama_cpp_python-9.9.9/vendor/llama.cpp/common/arg.cpp", b"// args\n"),
                           ("llama_cpp_python-9.9.9/setup.py", b"print('no')\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return tb


def test_build_once_under_a_lock_then_only_look(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "cache"))
    root = lb.peers_dir("9.9.9")
    (root / "sdist").mkdir(parents=True)
    _sdist(root / "sdist")
    calls: list[list[str]] = []

    def fake_run(cmd, log, cwd=None):
        calls.append(list(cmd))
        if cmd[:2] == ["cmake", "--build"]:
            bin_dir = root / "build" / "bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            for t in lb.TARGETS:
                (bin_dir / t).write_text("#!/bin/sh\n")
                (bin_dir / t).chmod(0o755)

    monkeypatch.setattr(lb, "_run", fake_run)
    said: list[str] = []
    assert lb.find_binaries("9.9.9") is None
    b = lb.ensure_binaries("9.9.9", say=said.append)
    assert b.path() == root / "build" / "bin" / "llama-speculative-simple"
    assert (root / "llama.cpp" / "CMakeLists.txt").read_text() == "project(x)\n"
    assert (root / "llama.cpp" / "common" / "arg.cpp").exists() and not (root / "llama.cpp" / "setup.py").exists()
    configure, build = calls
    assert "-DGGML_NATIVE=OFF" in configure and "-DGGML_AVX2=ON" in configure and "-DLLAMA_CURL=OFF" in configure
    assert build[-len(lb.TARGETS):] == list(lb.TARGETS)
    assert any("once" in m for m in said)
    # a second call finds the stamp and builds nothing
    calls.clear()
    assert lb.ensure_binaries("9.9.9", say=said.append) == b and calls == []
    # a binary gone missing invalidates the build
    (root / "build" / "bin" / "llama-bench").unlink()
    assert lb.find_binaries("9.9.9") is None


def test_failed_build_step_says_where_the_log_is(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "cache"))
    root = lb.peers_dir("9.9.9")
    (root / "sdist").mkdir(parents=True)
    _sdist(root / "sdist")
    with pytest.raises(CSDraftingError, match="build.log"):
        lb._run(["false"], root / "build.log")


# ------------------------------------------------------------------------------------------------ the real program


@pytest.mark.real
@pytest.mark.skipif(lb.find_binaries() is None if lb._installed_or_none() else True,
                    reason="llama.cpp's programs are not built (csdrafting bench --peers llama-cpp-... builds them)")
def test_real_program_runs_and_parses(qwen05_gguf):
    text = "def add(a, b):\n"
    argv = lb.command(lb.find_binaries(), "llama-cpp-ngram-map-k", lb.PeerArgs(qwen05_gguf, text, 8, 2, 512))
    run = lb.run_peer(argv, text)
    assert run.output.new_tokens == 8 and run.output.decode_speed > 0 and run.output.text.strip()
    assert run.wall_seconds > run.output.decode_seconds


class _CharVocab:
    """Stands in for the GGUF vocabulary: one token per character."""

    def detokenize(self, ids, special=True):
        return "".join(chr(i) for i in ids).encode()

    def tokenize(self, data, add_bos=False, special=True):
        return [ord(c) for c in data.decode()]


def _executor(monkeypatch, fixture: str):
    from csdrafting.bench.executors import LlamaCppBinExecutor

    out, err, meta = _fixture(fixture)
    ex = object.__new__(LlamaCppBinExecutor)
    ex.lb, ex.binaries = lb, lb.Binaries(Path("/bin"), "0.3.36")
    ex.target_ref, ex.draft_ref, ex.model, ex.draft = T, D, Path("/m/t.gguf"), Path("/m/d.gguf")
    ex.threads, ex.n_ctx, ex.extra, ex.vocab = 2, 1024, {}, _CharVocab()
    seen = {}

    def fake_run(argv, prompt_text, timeout=0):
        seen["argv"] = argv
        return lb.PeerRun(lb.parse_output(out, err, prompt_text), meta["decode_seconds"] + meta["prefill_seconds"] + 1.5, argv)

    monkeypatch.setattr(lb, "run_peer", fake_run)
    return ex, meta, seen


def test_executor_records_the_programs_own_figures(monkeypatch, tmp_path):
    ex, meta, seen = _executor(monkeypatch, "ngram-map-k")
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "cache"))
    ex.model = tmp_path / "cache" / "models" / "t.gguf"  # where `make models` puts it
    m = {x.name: x for x in build_methods(CascadeSpec(target=T, drafters=[D], k=[[4]]), methods=(),
                                           peers=("llama-cpp-ngram-map-k",))}["llama-cpp-ngram-map-k"]
    prompt = [ord(c) for c in meta["prompt_text"]]
    o = ex.run(m, m.resolve(), prompt, meta["max_new_tokens"], None)
    assert _opt(seen["argv"], "--spec-type") == "ngram-map-k" and _opt(seen["argv"], "-p") == meta["prompt_text"]
    assert o.tokens == [ord(c) for c in meta["text"]][: meta["max_new_tokens"]]  # the printed text, tokenized, cut
    assert o.metrics.new_tokens == meta["new_tokens"]
    # both timings from one run: decode only as printed, end to end with the printed prompt time
    assert o.metrics.decode_seconds == pytest.approx(meta["decode_seconds"])
    assert o.metrics.seconds == pytest.approx(meta["decode_seconds"] + meta["prefill_seconds"])
    assert o.metrics.prefill_seconds == pytest.approx(meta["prefill_seconds"])
    c = meta["counters"]
    assert o.metrics.levels[1].drafted == c["n_drafted"] and o.metrics.levels[1].accepted == c["n_accept"]
    assert o.metrics.target_steps == meta["new_tokens"] - c["n_accept"]
    assert o.config["prompt_ids_identical"] and o.config["eos_not_in_tokens"]
    assert o.config["load_and_exit_seconds"] == pytest.approx(1.5)
    assert "<prompt text>" in o.config["argv"] and meta["prompt_text"] not in o.config["argv"]
    # the records are committed as evidence: the machine's cache path is not spelled out in them
    assert str(ex.model) in seen["argv"] and "$CSDRAFTING_CACHE/models/t.gguf" in o.config["argv"]
    assert not any(str(tmp_path) in a for a in o.config["argv"])
    from csdrafting.bench.executors.programs import portable

    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path / "link"))  # a cache reached through a link
    assert portable(str(tmp_path / "disk" / "m.gguf")) == "$CSDRAFTING_CACHE/m.gguf"
    assert portable(str(tmp_path / "link" / "m.gguf")) == "$CSDRAFTING_CACHE/m.gguf"
    assert portable("-n") == "-n" and not portable(str(tmp_path / "diskette")).startswith("$CSDRAFTING_CACHE")
