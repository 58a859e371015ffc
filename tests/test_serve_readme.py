"""The README's serve examples are tests: its fenced blocks are read from README.md and run as written,
only the port changed, so the examples cannot drift from the code again.

Fast: a tiny cascade served under the name the examples send (which must be the name the default
`csdrafting serve` serves). Real: `csdrafting serve` exactly as the README starts it, on the packaged
model, and the quick starts that run on the shipped weights.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import serve_tiny

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT_ADDRESS = "127.0.0.1:8000"


# ------------------------------------------------------------------------------------------------ reading the README
def section(title: str) -> str:
    """The text of a `## title` section, up to the next `## ` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def commands(code: str) -> list[str]:
    """Shell commands of a block: continuation lines joined; a command starts at an unindented line."""
    out: list[str] = []
    for line in code.splitlines():
        if out and (out[-1].endswith("\\") or line[:1].isspace()):
            out[-1] = out[-1].removesuffix("\\").rstrip() + " " + line.strip()
        elif line.strip():
            out.append(line)
    return out


def argv(command: str) -> list[str]:
    """A README command line as argv: `.venv/bin/csdrafting` and `.venv/bin/python` are this interpreter."""
    words = shlex.split(command, comments=True)
    head = {".venv/bin/csdrafting": [sys.executable, "-m", "csdrafting.cli"], ".venv/bin/python": [sys.executable]}
    return head.get(words[0], words[:1]) + words[1:]


class Examples:
    """The serve section's server commands, curl commands and Python snippets."""

    def __init__(self) -> None:
        blocks = fenced(section("Serve"))
        shell = [c for lang, code in blocks if lang == "bash" for c in commands(code)]
        self.servers = [c for c in shell if "csdrafting serve" in c]
        self.curls = [c for c in shell if c.startswith("curl ")]
        self.python = [code for lang, code in blocks if lang == "python"]
        text = "\n".join([*self.curls, *self.python])
        self.models = set(re.findall(r'"model": "([^"]+)"', text)) | set(re.findall(r'model="([^"]+)"', text))
        assert self.servers and self.curls and self.python, "the Serve section lost its examples"

    @staticmethod
    def at(code: str, base: str) -> str:
        assert DEFAULT_ADDRESS in code, code
        return code.replace(f"http://{DEFAULT_ADDRESS}", base)


def run_examples(ex: Examples, base: str) -> None:
    """Every curl command and Python snippet against the server at `base`; each answer checked."""
    for cmd in ex.curls:
        done = subprocess.run(["bash", "-c", Examples.at(cmd, base)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (cmd, done.stderr)
        if '"stream": true' in cmd:
            events = [line.removeprefix("data: ") for line in done.stdout.split("\n\n") if line.strip()]
            assert events[-1] == "[DONE]", (cmd, done.stdout[-500:])
            chunks = [json.loads(e) for e in events[:-1]]
            assert not [c for c in chunks if "error" in c], (cmd, done.stdout[-500:])
            assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), cmd
        else:
            answer = json.loads(done.stdout)
            assert "error" not in answer and answer["choices"][0]["text"], (cmd, done.stdout[:500])
    for code in ex.python:
        done = subprocess.run([sys.executable, "-c", Examples.at(code, base)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and done.stdout.strip(), (done.stdout[-500:], done.stderr[-2000:])


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------------------------------------ fast
def test_the_examples_name_the_model_the_default_server_serves():
    from csdrafting.spec import DEFAULT_SPEC

    ex = Examples()
    assert ex.models == {DEFAULT_SPEC.target}, ex.models  # `csdrafting serve` serves its target's reference
    assert argv(ex.servers[0])[3:] == ["serve"]  # the first one is the default server, as the README says


def test_every_serve_command_line_parses(tmp_path):
    """Each documented `csdrafting serve` line gets past the argument parser (it fails later, on purpose: the
    config file it names does not exist here)."""
    for cmd in Examples().servers:
        words = argv(cmd)
        if "--config" not in words:
            words += ["--config", str(tmp_path / "absent.json")]
        done = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=sources_first())
        assert done.returncode == 2 and re.search(r"error: cascade config \S+ does not exist", done.stderr), (cmd, done.stderr)


def sources_first() -> dict:
    return {**os.environ, "PYTHONPATH": str(serve_tiny.ROOT / "src")}


def test_the_serve_examples_run_against_a_tiny_server():
    ex = Examples()
    (model,) = ex.models
    proc, base = serve_tiny.start_server_process("--served-model-name", model, "--maxgram-only")
    try:
        run_examples(ex, base)
    finally:
        stop(proc)


# ------------------------------------------------------------------------------------------------ real
@pytest.mark.real
def test_the_serve_examples_run_against_the_readmes_server():
    ex = Examples()
    port = serve_tiny.free_port()
    proc, base = serve_tiny.launch(argv(ex.servers[0]) + ["--port", str(port)], port, timeout=600)
    try:
        run_examples(ex, base)
    finally:
        stop(proc)
    assert "Traceback" not in serve_tiny.output(proc)


@pytest.mark.real
def test_the_quick_starts_that_run_on_the_shipped_weights():
    """Python and command-line quick starts, verbatim; those on the F32/Q4_0 tiers (a 7 GB conversion and
    ~3 tokens/s here) are left out, and the test says how many."""
    blocks = fenced(section("Quick start: Python")) + fenced(section("Quick start: command line"))
    python = [code for lang, code in blocks if lang == "python"]
    shell = [c for lang, code in blocks if lang == "bash" for c in commands(code)]
    heavy = re.compile(r":F32|:Q4_0|:F16")
    ran = 0
    for code in python:
        if heavy.search(code):
            continue
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=sources_first())
        assert done.returncode == 0 and done.stdout.strip(), (code, done.stderr[-2000:])
        ran += 1
    for cmd in shell:
        if heavy.search(cmd):
            continue
        done = subprocess.run(argv(cmd), capture_output=True, text=True, timeout=900, env=sources_first())
        assert done.returncode == 0 and done.stdout.strip(), (cmd, done.stderr[-2000:])
        ran += 1
    assert ran >= 3, ran
