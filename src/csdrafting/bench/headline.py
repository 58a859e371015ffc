"""summary.md's headline: per dataset (and per Spec-Bench group), ours beside plain decoding, llama.cpp's
best n-gram mode and the oracle, decode-only and end to end, with paired per-prompt ratios; and the
target's measured cost curve that the result stands beside.

Every ratio is paired: per prompt that both methods ran in this run, one's tokens/s over the other's;
the tables show the median over prompts and the range (worst-best prompt). "llama.cpp best n-gram" takes,
PER PROMPT and per timing, the faster of `llama-cpp-ngram-mod` and `llama-cpp-ngram-map-k` (the stricter
comparison for us: no single mode setting could do better on every prompt).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..exactness import Tally
from .llamacpp_bin import BIN_BASELINE
from .methods import ENGINE, ORACLE
from .turns import DECODE, DIVERGENT, E2E, rate, verdict_of

NGRAM_MODES = ("llama-cpp-ngram-mod", "llama-cpp-ngram-map-k")
BEST_NGRAM = "llama.cpp best n-gram (per prompt)"
SPECBENCH = "specbench"
TIMINGS_SHOWN = (DECODE, E2E)


@dataclass(frozen=True)
class Section:
    """One headline table: a title and the eval records it covers."""

    title: str
    records: list[dict]


def sections(records: Iterable[dict]) -> list[Section]:
    """One per dataset in run order; for the whole `specbench` one per Spec-Bench group too; and, when
    several specbench-<group> sets ran, their prompts pooled."""
    recs = [r for r in records if r.get("phase") == "eval"]
    out: list[Section] = []
    for ds in dict.fromkeys(r["dataset"] for r in recs):
        mine = [r for r in recs if r["dataset"] == ds]
        out.append(Section(ds, mine))
        if ds == SPECBENCH:
            for g in dict.fromkeys(r.get("group", "") for r in mine):
                if g:
                    out.append(Section(f"{ds} / {g}", [r for r in mine if r.get("group") == g]))
    parts = [ds for ds in dict.fromkeys(r["dataset"] for r in recs) if ds.startswith(SPECBENCH + "-")]
    if len(parts) >= 2:
        out.append(Section(f"Spec-Bench groups pooled ({', '.join(p.removeprefix(SPECBENCH + '-') for p in parts)})",
                           [r for r in recs if r["dataset"] in parts]))
    return out


def _by_prompt(recs: Sequence[dict]) -> dict[str, dict[tuple[str, str], dict]]:
    """method -> (dataset, prompt id) -> record."""
    out: dict[str, dict[tuple[str, str], dict]] = {}
    for r in recs:
        out.setdefault(r["method"], {})[(r["dataset"], r["prompt_id"])] = r
    return out


def best_ngram(by: dict, timing: str) -> dict[tuple[str, str], float]:
    """Per prompt: the faster of llama.cpp's n-gram modes by `timing`."""
    out: dict[tuple[str, str], float] = {}
    for mode in NGRAM_MODES:
        for key, r in by.get(mode, {}).items():
            v = rate(r, timing)
            if v is not None:
                out[key] = max(out.get(key, 0.0), v)
    return out


def _rates(recs: dict[tuple[str, str], dict], timing: str) -> dict[tuple[str, str], float]:
    return {k: v for k, v in ((k, rate(r, timing)) for k, r in recs.items()) if v is not None}


def _ratios(a: dict, b: dict) -> list[float]:
    return [a[k] / b[k] for k in a if k in b and b[k] > 0]


def _cell(xs: Sequence[float]) -> str:
    if not xs:
        return "–"
    med = statistics.median(xs)
    return f"{med:.2f}x" if len(xs) == 1 else f"{med:.2f}x ({min(xs):.2f}–{max(xs):.2f})"


def _tps(xs: Iterable[float]) -> str:
    xs = list(xs)
    return f"{statistics.median(xs):.2f}" if xs else "–"


def _exactness(recs: dict[tuple[str, str], dict], by: dict) -> str:
    """identical / tie / mismatch against each record's own baseline (+ a peer's unexamined divergences)."""
    t, div = Tally(), 0
    for key, r in recs.items():
        base = by.get(r["baseline"], {}).get(key)
        if base is None or r["method"] == r["baseline"]:
            continue
        v = verdict_of(r, base)
        if v == DIVERGENT:
            div += 1
        else:
            t.add(v)
    if not t.total and not div:
        return "baseline" if any(r["method"] == r["baseline"] for r in recs.values()) else "–"
    return t.cell() + (f" + {div} div" if div else "")


def _label(method: str, recs: dict) -> str:
    if method != ORACLE:
        return method
    ks = sorted({r["params"].get("draft_length") for r in recs.values()} - {None})
    return f"oracle (k={','.join(map(str, ks))})" if ks else method


def table(sec: Section, order: Sequence[str] = ()) -> list[str]:
    """The headline table of one section, and how close each engine method comes to the oracle."""
    by = _by_prompt(sec.records)
    engine = [m for m, rs in by.items() if next(iter(rs.values()))["family"] == ENGINE]
    rank = {m: i for i, m in enumerate(order)}
    engine.sort(key=lambda m: (m != "plain", m == ORACLE, rank.get(m, 999), m))
    peers = [m for m in (BIN_BASELINE, *NGRAM_MODES) if m in by]
    if not engine and not peers:
        return []
    best = {t: best_ngram(by, t) for t in TIMINGS_SHOWN}
    lines = [f"### {sec.title}", "",
             "| method | prompts | decode tok/s | decode × own plain | decode × best n-gram | e2e tok/s | e2e × own plain "
             "| e2e × best n-gram | exactness (identical / tie / mismatch) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    speedups: dict[str, float] = {}
    for m in engine + peers:
        recs = by[m]
        base = by.get(next(iter(recs.values()))["baseline"], {})
        cells = []
        for t in TIMINGS_SHOWN:
            mine = _rates(recs, t)
            own = _ratios(mine, _rates(base, t))
            cells += [_tps(mine.values()), _cell(own), _cell(_ratios(mine, best[t])) if m in engine else ""]
            if t == DECODE and own:
                speedups[m] = statistics.median(own)
        lines.append(f"| {_label(m, recs)} | {len(recs)} | " + " | ".join(cells) + f" | {_exactness(recs, by)} |")
    if best[DECODE] or best[E2E]:
        plain = by.get(BIN_BASELINE, {})
        cells = []
        for t in TIMINGS_SHOWN:
            cells += [_tps(best[t].values()), _cell(_ratios(best[t], _rates(plain, t))), ""]
        lines.append(f"| {BEST_NGRAM} | {len(best[DECODE] or best[E2E])} | " + " | ".join(cells) + " | |")
    lines.append("")
    oracle = speedups.get(ORACLE)
    if oracle is not None and oracle > 1:
        for m in engine:
            if m in ("plain", ORACLE) or m not in speedups:
                continue
            if speedups[m] <= 1:
                lines.append(f"- {m}: no decode speedup over plain ({speedups[m]:.2f}x; the oracle {oracle:.2f}x, medians)")
            else:
                share = (speedups[m] - 1) / (oracle - 1)  # of the gain: 1.0x is none of it
                lines.append(f"- {m}: {100 * share:.0f}% of the oracle's decode speedup over plain "
                             f"({speedups[m]:.2f}x of {oracle:.2f}x, medians)")
        lines.append("")
    return lines



def cost_curve_lines(records: Iterable[dict]) -> list[str]:
    """The target's cost curve(s) recorded by the engine runs: seconds of one pass over n new tokens."""
    curves: dict[str, list] = {}
    for r in records:
        c = r.get("target_cost_curve")
        if c:
            key = json.dumps(c, sort_keys=True)
            curves.setdefault(key, [c, 0])[1] += 1
    if not curves:
        return []
    out = ["## The target's cost curve (what cost-aware drafting plans with; measured in this run)", "",
           "Seconds of one target pass over n new tokens; the ratio to one token is what a review of n costs in "
           "single steps (the oracle's ceiling follows from it).", ""]
    for i, (c, n) in enumerate(sorted(curves.values(), key=lambda x: -x[1])):
        one = c["seconds"][0] if c["ns"][0] == 1 else None
        out.append(f"{c.get('source', 'measured')}; used by {n} record(s)" + (" (another session)" if i else "") + ":")
        out.append("")
        out.append("| n | " + " | ".join(str(k) for k in c["ns"]) + " |")
        out.append("|---|" + "---:|" * len(c["ns"]))
        out.append("| ms | " + " | ".join(f"{1000 * s:.1f}" for s in c["seconds"]) + " |")
        if one:
            out.append("| × one token | " + " | ".join(f"{s / one:.2f}" for s in c["seconds"]) + " |")
        out.append("")
    return out


def headline_tables(records: Iterable[dict], order: Sequence[str] = ()) -> list[str]:
    """Every section's table, under one heading (empty when there are no eval records)."""
    records = list(records)
    body: list[str] = []
    for sec in sections(records):
        body += table(sec, order)
    if not body:
        return []
    return ["## Headline per workload (paired per-prompt ratios: median (worst–best); same run)", "",
            "decode = the prompt's prefill excluded, e2e = included; a conversation's figures are its turns' totals. "
            "× own plain: engine methods over `plain`, llama.cpp's programs over `llama-cpp-plain`. × best n-gram: "
            f"over the faster of {' / '.join(NGRAM_MODES)} on each prompt. oracle = the target's own greedy output "
            "offered as a free draft of k tokens (k as labelled; chosen on calibration prompts when the suite "
            "calibrates), the ceiling at this verification cost. Exactness counts prompts: a conversation is "
            "identical when all its turns are; ties are divergences within the target's measured batch-shape "
            "noise.", ""] + body + order_lines(records) + cost_curve_lines(records)


def order_lines(records: Iterable[dict]) -> list[str]:
    """Whether running first or second moved a method's ratio to its baseline: per method, the paired decode
    ratios of the prompts where it ran before its baseline and of those where it ran after (runner module
    docstring, "Order"). Records folded from several rounds (`repeats`) ran in both orders and are left out."""
    recs = [r for r in records if r.get("phase") == "eval" and "repeats" not in r]
    base = {(r["dataset"], r["prompt_id"], r["method"]): r for r in recs}
    split: dict[str, tuple[list[float], list[float]]] = {}
    for r in recs:
        b = base.get((r["dataset"], r["prompt_id"], r["baseline"]))
        if "ran_before_baseline" not in r or b is None:
            continue
        mine, theirs = rate(r, DECODE), rate(b, DECODE)
        if mine and theirs:
            split.setdefault(r["method"], ([], []))[not r["ran_before_baseline"]].append(mine / theirs)
    rows = [(m, a, b) for m, (a, b) in split.items() if a and b]
    if not rows:
        return []
    out = ["## Order check (decode × own baseline, all workloads: median (worst–best))", "",
           "Every other prompt ran its methods in the swapped order; a method's ratio should not depend on "
           "whether it ran before its baseline or after.", "",
           "| method | ran first: prompts | ratio | ran second: prompts | ratio |", "|---|---:|---:|---:|---:|"]
    out += [f"| {m} | {len(a)} | {_cell(a)} | {len(b)} | {_cell(b)} |" for m, a, b in rows]
    return out + [""]

