"""Offline corpus and builder for the packaged Qwen2.5 bigram table (Max-Gram's fallback).

The paper built its bigram tables from Wikipedia; we have no network, so the table for the Qwen2.5 tokenizer
(shared by Qwen2.5-Coder 0.5B/1.5B/..., 151,936 entries) is built from two offline corpora that ship with the
machine image:

1. ``stdlib``: the Python sources of the running interpreter's standard library
   (``sysconfig.get_paths()["stdlib"]``, ``**/*.py``), skipping
   - any directory named ``test``, ``tests`` or ``idle_test`` (test suites), ``site-packages`` and ``__pycache__``;
   - the ``encodings/`` package (mostly machine-generated charmap tables, which would skew the counts);
   - ``_sysconfigdata*.py`` (build-machine specific paths and flags).
2. ``doc``: Debian's ``python3-doc`` (``apt-get install python3-doc``): the reStructuredText sources of the
   HTML docs, ``/usr/share/doc/python3*/html/_sources/**/*.txt`` (plain text). Doc trees are deduplicated by
   their resolved path (``python3-doc/html`` is a symlink to ``python3.X/html``). Only if a doc tree has no
   ``_sources`` do we fall back to its ``**/*.html`` files with the tags stripped.

Evaluation data must never leak into the table: any file whose path mentions ``human_eval``/``humaneval``,
``mt_bench``, ``mmlu`` or ``lm_eval`` (case-insensitive, ``-`` counted as ``_``) is excluded.

The corpus is the fixed, sorted list of such files: stdlib entries first (``stdlib:<path relative to the
stdlib dir>``, sorted), then doc entries (``doc:<path relative to /usr/share/doc>``, sorted). Its sha256 (of the
entries joined by ``\\n``) and the sha256 of the concatenated texts are recorded in the table's meta, so the same
machine image gives the same table. Each file is tokenized on its own (no pairs across file boundaries),
without BOS and without parsing special tokens. No cap is needed: the full corpus (~22 MB, ~6M tokens)
tokenizes in well under a minute on 2 cores.

Rebuild the packaged table (from the repository root)::

    python -m csdrafting.drafters.bigram_corpus --gguf /path/to/qwen2.5-coder-*.gguf \\
        --out src/csdrafting/data/qwen2.5-coder-bigram.npz
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
import time
import tokenize
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

from .bigram import BigramTable

DEFAULT_BIGRAM_NAME = "qwen2.5-coder-bigram.npz"
CORPUS_VERSION = 1
DOC_ROOT = "/usr/share/doc"
DOC_GLOB = "python3*/html"

_EVAL_PATH = re.compile(r"human_?eval|mt_bench|mmlu|lm_eval", re.IGNORECASE)
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})

CORPUS_DESCRIPTION = (
    "Python standard library sources of the running interpreter (*.py; without test/tests/idle_test dirs, "
    "site-packages, encodings/, _sysconfigdata*) followed by Debian python3-doc reST sources "
    "(/usr/share/doc/python3*/html/_sources/**/*.txt); sorted file list; files whose path mentions "
    "human_eval/humaneval/mt_bench/mmlu/lm_eval excluded; each file tokenized separately"
)


def _is_eval_path(path: str) -> bool:
    return bool(_EVAL_PATH.search(path.replace("-", "_")))


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_files() -> list[tuple[str, Path]]:
    """(entry, path) for the stdlib part of the corpus, sorted by entry."""
    root = _stdlib_root()
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        parts = rel.parts
        if any(d in _SKIP_DIRS for d in parts[:-1]):
            continue
        if parts[0] == "encodings" or (len(parts) == 1 and parts[0].startswith("_sysconfigdata")):
            continue
        entry = "stdlib:" + rel.as_posix()
        if _is_eval_path(entry) or not p.is_file():
            continue
        out.append((entry, p))
    return sorted(out)


def doc_files() -> list[tuple[str, Path]]:
    """(entry, path) for the python3-doc part of the corpus, sorted by entry; empty if not installed."""
    base = Path(DOC_ROOT)
    roots = sorted({Path(r).resolve() for r in glob.glob(str(base / DOC_GLOB)) if os.path.isdir(r)})
    out = []
    for root in roots:
        src = root / "_sources"
        files = list(src.rglob("*.txt")) if src.is_dir() else list(root.rglob("*.html"))
        for p in files:
            try:
                rel = p.relative_to(base)
            except ValueError:
                rel = p
            entry = "doc:" + rel.as_posix()
            if _is_eval_path(entry) or not p.is_file():
                continue
            out.append((entry, p))
    return sorted(out)


def corpus_files(include_doc: bool = True) -> list[tuple[str, Path]]:
    files = stdlib_files()
    if include_doc:
        files += doc_files()
    return files


def file_list_sha256(entries: list[str]) -> str:
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _strip_html(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.parts))


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".py":
        try:
            import io

            enc, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
            return raw.decode(enc, errors="replace")
        except (SyntaxError, LookupError):
            pass
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".html":
        text = _strip_html(text)
    return text


def _tokenizer_info(llm, gguf_path: str | Path) -> dict:
    n_vocab = int(llm.n_vocab())
    pieces = [llm._model.token_get_text(i) for i in range(n_vocab)]
    digest = hashlib.sha256(json.dumps(pieces, ensure_ascii=False).encode()).hexdigest()
    md = getattr(llm, "metadata", {}) or {}
    return {
        "name": "Qwen2.5 BPE (" + md.get("tokenizer.ggml.model", "?") + "/" + md.get("tokenizer.ggml.pre", "?") + ")",
        "vocab_size": n_vocab,
        "token_table_sha256": digest,
        "digest_of": "sha256 of json.dumps([token_get_text(i) for i in range(vocab_size)], ensure_ascii=False)",
        "source_gguf": Path(gguf_path).name,
        "source_model": md.get("general.name"),
        "via": "llama.cpp tokenize(add_bos=False, special=False)",
    }


def build_qwen_bigram(gguf_path: str | Path, out_path: str | Path, progress: bool = True, include_doc: bool = True) -> BigramTable:
    """Tokenize the offline corpus with the GGUF's tokenizer (llama.cpp), count bigrams, save to ``out_path``."""
    import llama_cpp
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    tok = _tokenizer_info(llm, gguf_path)
    files = corpus_files(include_doc)
    if not files:
        raise RuntimeError("empty corpus")
    entries = [e for e, _ in files]
    n_stdlib = sum(e.startswith("stdlib:") for e in entries)
    stats = {"n_tokens": 0, "n_bytes": 0}
    content = hashlib.sha256()

    def sequences():
        bar = tqdm(files, desc="tokenizing corpus", unit="file", disable=not progress)
        for entry, path in bar:
            data = _read_text(path).encode()
            content.update(hashlib.sha256(data).digest())
            stats["n_bytes"] += len(data)
            ids = llm.tokenize(data, add_bos=False, special=False) if data else []
            stats["n_tokens"] += len(ids)
            bar.set_postfix(tokens=stats["n_tokens"], refresh=False)
            yield ids

    meta = {"format": "csdrafting-bigram", "corpus_version": CORPUS_VERSION}
    table = BigramTable.from_sequences(sequences(), tok["vocab_size"], meta)
    table.meta.update(
        corpus=CORPUS_DESCRIPTION,
        n_files=len(files),
        n_files_stdlib=n_stdlib,
        n_files_doc=len(files) - n_stdlib,
        n_tokens=stats["n_tokens"],
        n_bytes=stats["n_bytes"],
        file_list_sha256=file_list_sha256(entries),
        content_sha256=content.hexdigest(),
        content_digest_of="sha256 over the sha256 digests of each file's utf-8 text, in file-list order",
        stdlib_dir=str(_stdlib_root()),
        tokenizer=tok,
        python_version=sys.version.split()[0],
        python_implementation=sys.implementation.name,
        llama_cpp_python=getattr(llama_cpp, "__version__", None),
    )
    table.save(out_path)
    if progress:
        cov = table.meta["n_sources"] / table.vocab_size
        print(
            f"bigram table: {len(files)} files, {stats['n_bytes'] / 1e6:.1f} MB, {stats['n_tokens']:,} tokens, "
            f"{table.meta['n_sources']:,}/{table.vocab_size:,} tokens with a successor ({cov:.1%}), "
            f"{time.perf_counter() - t0:.1f}s -> {out_path} ({Path(out_path).stat().st_size / 1024:.0f} KiB)",
            file=sys.stderr,
        )
    return table


def default_bigram_path() -> Path:
    """Path of the packaged Qwen2.5 bigram table (package data ``csdrafting/data/qwen2.5-coder-bigram.npz``)."""
    return Path(str(resources.files("csdrafting").joinpath("data", DEFAULT_BIGRAM_NAME)))


def load_default_qwen_bigram() -> BigramTable:
    return BigramTable.load(default_bigram_path())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m csdrafting.drafters.bigram_corpus", description="Build the Qwen2.5 bigram table from the offline corpus")
    ap.add_argument("--gguf", help="any GGUF with the Qwen2.5 tokenizer (only the vocabulary is read)")
    ap.add_argument("--out", default=None, help="output .npz (default: the packaged table's path)")
    ap.add_argument("--no-doc", action="store_true", help="stdlib sources only")
    ap.add_argument("--list", action="store_true", help="print the corpus file list and its sha256, then exit")
    args = ap.parse_args(argv)
    if args.list:
        entries = [e for e, _ in corpus_files(not args.no_doc)]
        print("\n".join(entries))
        print(f"# {len(entries)} files, sha256 {file_list_sha256(entries)}", file=sys.stderr)
        return 0
    if not args.gguf:
        ap.error("--gguf is required to build")
    build_qwen_bigram(args.gguf, args.out or default_bigram_path(), progress=True, include_doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
