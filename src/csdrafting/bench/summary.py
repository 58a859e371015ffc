"""From records to results: the per (dataset, method) numbers, a Markdown table and PNG plots.

Definitions (all on eval-phase records):
- tokens/s: new tokens / wall seconds of one unit (a conversation: its turns' totals), by the run's
  headline timing (--timing: decoding only, the default, or end to end); the table shows the median over
  prompts. Every record holds both; headline.py's per-workload tables show both side by side.
- speedup: per prompt, the method's tokens/s over its baseline's on the same prompt (engine methods:
  `plain`; peers: their own backend's plain decoding); the table shows the median of these ratios.
- tokens per target pass: total new tokens / total target forward passes (ratio of sums).
- acceptance of level j: tokens drafted by level j that its reviewer accepted / tokens it drafted.
- acceptance by position: per reviewing level and draft position i, the share of its reviews of drafts
  with at least i tokens that accepted the first i of them (summed over prompts).
- SWI, the paper's standardized walltime improvement: total (new tokens x target parameters) / total
  (forward passes x parameters, summed over levels; Max-Gram and prompt lookup cost 0).
- exactness: of the prompts compared with the baseline's greedy output, identical / tie-divergent /
  mismatched. A divergence of an engine method is examined at its first differing token
  (csdrafting.exactness): a tie when the target's margin between the two tokens is within its measured
  batch-shape noise, else a mismatch (a bug). Peers run other code: their divergences are counted, not
  examined (shown as "div").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..exactness import IDENTICAL, MISMATCH, TIE, Tally
from .headline import headline_tables
from .runner import DIVERGENT, EVAL
from .turns import differing_verdict, verdict_of

ALL = "all"


@dataclass
class Row:
    dataset: str
    method: str
    family: str
    baseline: str
    n: int
    tps_median: float
    speedup_median: float | None
    speedup_n: int
    tokens_per_pass: float
    level_acceptance: list[tuple[str, float | None, int]]  # (level name, acceptance, drafted) for levels >= 1
    by_position: dict[int, list[tuple[int, int]]]  # reviewer level -> [(reviewed, accepted)] per position
    swi: float | None
    exact_matches: int
    exact_compared: int
    vs_plain_matches: int = 0
    vs_plain_compared: int = 0
    params: list[str] = field(default_factory=list)
    ties: int = 0
    mismatches: int = 0
    divergent: int = 0  # differs, not examined (peers)
    speedup_min: float | None = None  # the worst prompt's ratio to the baseline

    @property
    def is_baseline(self) -> bool:
        return self.method == self.baseline


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _key_params(p: dict) -> str:
    """A row's configuration as it ran: its levels and K (cumulative), or its draft length / peer mode."""
    parts = []
    if p.get("drafters"):
        parts.append("levels: target > " + " > ".join(p["drafters"]))
    if p.get("k"):
        parts.append("K=" + str(p["k"]).replace(" ", ""))
    elif p.get("draft_length") is not None:
        parts.append(f"k={p['draft_length']}")
    if p.get("lenience", 1.0) not in (1, 1.0, None):
        parts.append(f"lenience {p['lenience']}")
    length = p.get("bottom_length", p.get("maxgram_length"))  # records before the rename say maxgram_length
    if length:
        parts.append(f"bottom length {length}")
    if p.get("config"):
        parts.append("config " + ",".join(f"{k}={v}" for k, v in sorted(p["config"].items())).replace(" ", ""))
    if p.get("spec_type"):
        parts.append("llama-completion" if p["spec_type"] == "none" else f"llama-speculative-simple --spec-type {p['spec_type']}")
    return "; ".join(parts)


def _comparable(r: dict, plain: dict) -> tuple[list, list]:
    """Tokens of a record and of plain decoding, on the same footing: programs that do not print the
    end-of-text token are compared with plain's output without it."""
    p = plain["tokens"]
    if (r.get("config") or {}).get("eos_not_in_tokens") and plain.get("finish_reason") == "eos":
        p = p[:-1]
    return r["tokens"], p


def aggregate(records: Iterable[dict], order: Sequence[str] | None = None) -> list[Row]:
    """One Row per (dataset, method) of the eval records, plus pooled rows with dataset 'all'."""
    recs = [r for r in records if r.get("phase") == EVAL]
    by_prompt = {(r["dataset"], r["prompt_id"], r["method"]): r for r in recs}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
        groups.setdefault((ALL, r["method"]), []).append(r)
    rows = []
    for (ds, method), rs in groups.items():
        first = rs[0]
        ratios, exact, compared, vsp, vsp_n = [], 0, 0, 0, 0
        verdicts = {TIE: 0, MISMATCH: 0, DIVERGENT: 0}
        for r in rs:
            base = by_prompt.get((r["dataset"], r["prompt_id"], r["baseline"]))
            if base is not None and base["tokens_per_second"] > 0:
                ratios.append(r["tokens_per_second"] / base["tokens_per_second"])
            if base is not None and method != r["baseline"]:
                compared += 1
                v = verdict_of(r, base)
                exact += v == IDENTICAL
                if v != IDENTICAL:
                    verdicts[v] += 1
            plain = by_prompt.get((r["dataset"], r["prompt_id"], "plain"))
            if plain is not None and method != "plain":
                vsp_n += 1
                a, b = _comparable(r, plain)
                vsp += a == b
        tokens = sum(r["new_tokens"] for r in rs)
        passes = sum(r["metrics"]["levels"][0]["forward_passes"] for r in rs)
        cost = sum(r["metrics"]["standardized_cost"] for r in rs)
        plain_cost = sum(r["new_tokens"] * r["metrics"]["levels"][0]["n_params"] for r in rs)
        n_levels = max(len(r["metrics"]["levels"]) for r in rs)
        acc = []
        pos: dict[int, list[tuple[int, int]]] = {}
        for j in range(n_levels):
            lvs = [r["metrics"]["levels"][j] for r in rs if len(r["metrics"]["levels"]) > j]
            if j >= 1:
                drafted = sum(lv["drafted"] for lv in lvs)
                accepted = sum(lv["accepted"] for lv in lvs)
                acc.append((lvs[0]["name"], accepted / drafted if drafted else None, drafted))
            width = max((len(lv["reviewed_by_position"]) for lv in lvs), default=0)
            if width:
                cells = []
                for i in range(width):
                    rev = sum(lv["reviewed_by_position"][i] for lv in lvs if len(lv["reviewed_by_position"]) > i)
                    ok = sum(lv["accepted_by_position"][i] for lv in lvs if len(lv["accepted_by_position"]) > i)
                    cells.append((rev, ok))
                pos[j] = cells
        params = sorted({_key_params(r["params"]) for r in rs} - {""})
        rows.append(Row(
            dataset=ds, method=method, family=first["family"], baseline=first["baseline"], n=len(rs),
            tps_median=statistics.median(r["tokens_per_second"] for r in rs),
            speedup_median=_median(ratios), speedup_n=len(ratios), speedup_min=min(ratios, default=None),
            tokens_per_pass=tokens / passes if passes else 0.0, level_acceptance=acc, by_position=pos,
            # None: parameter counts unknown (llama.cpp's programs)
            swi=plain_cost / cost if cost and plain_cost else None, exact_matches=exact, exact_compared=compared,
            vs_plain_matches=vsp, vs_plain_compared=vsp_n, params=params,
            ties=verdicts[TIE], mismatches=verdicts[MISMATCH], divergent=verdicts[DIVERGENT],
        ))
    ds_order = {d: i for i, d in enumerate(["humaneval", "mmlu", "mtbench"])}
    m_order = {m: i for i, m in enumerate(order or [])}
    rows.sort(key=lambda r: (r.dataset == ALL, ds_order.get(r.dataset, 99), r.dataset,
                             m_order.get(r.method, 999), r.method))
    return rows


def paired_ratios(records: Iterable[dict], dataset: str, method: str, other: str) -> list[float]:
    """Per eval prompt that both ran: tokens/s(method) / tokens/s(other)."""
    by: dict[str, dict[str, float]] = {}
    for r in records:
        if r.get("phase") == EVAL and r["dataset"] == dataset and r["method"] in (method, other):
            by.setdefault(r["prompt_id"], {})[r["method"]] = r["tokens_per_second"]
    return [v[method] / v[other] for v in by.values() if method in v and other in v and v[other] > 0]


def paired_ratio(records: Iterable[dict], dataset: str, method: str, other: str) -> tuple[float | None, int]:
    """Median over the eval prompts both ran of tokens/s(method) / tokens/s(other), and how many prompts."""
    ratios = paired_ratios(records, dataset, method, other)
    return _median(ratios), len(ratios)


def peer_lines(rows: Sequence[Row], records: Sequence[dict]) -> list[str]:
    """Every method beside llama.cpp's own programs of the same run: absolute tok/s, and paired ratios to
    llama.cpp's plain decoding and to its best n-gram mode."""
    from .llamacpp_bin import BIN_BASELINE

    out = []
    for ds in dict.fromkeys(r.dataset for r in rows if r.dataset != ALL):
        get = {r.method: r for r in rows if r.dataset == ds}
        if BIN_BASELINE not in get:
            continue
        ngram = [m for m in get if m.startswith("llama-cpp-ngram")]
        best = max(ngram, key=lambda m: get[m].tps_median) if ngram else None
        out += [f"### {ds}", "",
                f"| method | tok/s (median) | vs {BIN_BASELINE} (paired median) | vs {best or 'best n-gram'} (paired median) |",
                "|---|---:|---:|---:|"]
        for m, r in get.items():
            vs_plain, n = paired_ratio(records, ds, m, BIN_BASELINE)
            vs_best, _ = paired_ratio(records, ds, m, best) if best else (None, 0)
            out.append(f"| {m} | {r.tps_median:.2f} | {_fmt(vs_plain, '.2f', 'x')} | {_fmt(vs_best, '.2f', 'x')} |")
        out.append("")
    return out


def exactness_failures(rows: Sequence[Row]) -> list[Row]:
    """Rows with a mismatch: a divergence that the backend's batch-shape noise cannot explain."""
    return [r for r in rows if r.dataset != ALL and r.mismatches]


def exactness_cell(r: Row) -> str:
    """identical / tie / mismatch (and peers' unexamined divergences)."""
    if r.is_baseline:
        return "baseline"
    cell = Tally(r.exact_matches, r.ties, r.mismatches).cell()
    return cell + (f" + {r.divergent} div" if r.divergent else "")


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{suffix}"


def _acc_cell(acc: list[tuple[str, float | None, int]]) -> str:
    parts = [f"L{j + 1} {_fmt(None if a is None else 100 * a, '.0f', '%')}" for j, (_, a, d) in enumerate(acc) if d]
    return " · ".join(parts) or "–"


def _pos_cell(cells: list[tuple[int, int]], n: int = 8) -> str:
    return " ".join(_fmt(100 * ok / rev if rev else None, ".0f") for rev, ok in cells[:n])


def headline_lines(rows: Sequence[Row], records: Sequence[dict]) -> list[str]:
    """Per dataset, the questions a user asks, each answered with paired per-prompt medians of this run:
    the fastest engine method against plain decoding (and its worst prompt); the best cascade of two or
    more drafting levels against the best single-level speculative decoding; the fastest engine method
    against the fastest of the other programs measured (llama.cpp's own plain and speculative modes)."""
    out = []
    for ds in dict.fromkeys(r.dataset for r in rows if r.dataset != ALL):
        get = {r.method: r for r in rows if r.dataset == ds}
        # the oracle is a ceiling, not a method a user could run
        engine = [m for m, r in get.items() if r.family == "engine" and not r.is_baseline and m != "oracle"
                  and r.speedup_median is not None]
        if not engine:
            continue
        best = max(engine, key=lambda m: get[m].speedup_median)
        b = get[best]
        parts = [f"fastest: **{best}**, {b.speedup_median:.2f}x over {b.baseline} "
                 f"(worst prompt {_fmt(b.speedup_min, '.2f', 'x')}, {b.speedup_n} prompts)"]
        # drafting levels: one acceptance entry per level below the target
        cascades = [m for m in engine if len(get[m].level_acceptance) >= 2]
        singles = [m for m in engine if len(get[m].level_acceptance) == 1]
        if cascades and singles:
            c = max(cascades, key=lambda m: get[m].speedup_median)
            s = max(singles, key=lambda m: get[m].speedup_median)
            parts.append(f"best cascade **{c}** over best single-level speculative decoding **{s}**: "
                         f"{_fmt(paired_ratio(records, ds, c, s)[0], '.2f', 'x')}")
        peers = [m for m, r in get.items() if r.family != "engine"]
        if peers:
            fastest = max(peers, key=lambda m: get[m].tps_median)
            parts.append(f"{best} over the fastest other program **{fastest}**: "
                         f"{_fmt(paired_ratio(records, ds, best, fastest)[0], '.2f', 'x')}")
        out.append(f"- **{ds}**: " + "; ".join(parts))
    return out


def calibration_failures(records: Iterable[dict]) -> list[str]:
    """Calibration runs whose output mismatched their baseline's (they are exact methods too)."""
    return [f"{r['variant']} on {r['dataset']}/{r['prompt_id']} (calibration)" for r in records
            if r.get("phase") != EVAL and r.get("matches_baseline") is False
            and differing_verdict(r) == MISMATCH]


def render_markdown(rows: Sequence[Row], meta: dict, choices: dict | None = None, plots: Sequence[str] = (),
                    other_failures: Sequence[str] = (), records: Sequence[dict] = ()) -> str:
    lines = [f"# CS Drafting benchmark — suite `{meta.get('suite', '?')}`", ""]
    for k in ("command", "date", "machine", "target", "models", "generation", "timing", "records", "method order"):
        if meta.get(k):
            lines.append(f"- **{k}**: {meta[k]}")
    lines.append("")
    fails = exactness_failures(rows)
    if fails or other_failures:
        lines.append("## ⚠️ EXACTNESS MISMATCHES (bugs)")
        lines.append("")
        lines.append("These exact methods differed from their baseline's greedy output by more than the target's "
                     "measured batch-shape noise:")
        for r in fails:
            lines.append(f"- **{r.method}** on {r.dataset}: {r.mismatches} of {r.exact_compared} prompts mismatched "
                         f"{r.baseline} ({r.exact_matches} identical, {r.ties} numerical ties)")
        for text in other_failures:
            lines.append(f"- **{text}**: mismatched its baseline")
        lines.append("")
    lines += headline_tables(records, list(dict.fromkeys(r.method for r in rows)))
    head = headline_lines(rows, records)
    if head:
        lines += ["## In short (paired per-prompt ratios, medians, same run; headline timing)", ""] + head + [""]
    lines += [
        "## Results",
        "",
        "Speedup: median over prompts of (tokens/s of the method) / (tokens/s of its baseline on the same prompt); "
        "engine methods against `plain`, peers against their own backend's plain decoding. SWI: the paper's "
        "standardized walltime improvement (parameter-count cost). Exactness: identical / tie-divergent / "
        "mismatched against the baseline's greedy output (a tie: the target's two candidate tokens are closer than "
        "its measured batch-shape noise; `div`: a peer's divergence, not examined).",
        "",
    ]
    for ds in dict.fromkeys(r.dataset for r in rows):
        lines.append(f"### {ds}")
        lines.append("")
        lines.append("| method | configuration | n | tok/s (median) | speedup (median) | SWI | tokens / target pass | acceptance by level | exactness (identical / tie / mismatch) |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---|---:|")
        for r in (x for x in rows if x.dataset == ds):
            exact = exactness_cell(r)
            lines.append(
                f"| {r.method} | {', '.join(r.params) or ''} | {r.n} | {r.tps_median:.2f} | "
                f"{_fmt(r.speedup_median, '.2f', 'x')} | {_fmt(r.swi, '.2f', 'x')} | {r.tokens_per_pass:.2f} | "
                f"{_acc_cell(r.level_acceptance)} | {exact} |"
            )
        lines.append("")
    side = peer_lines(rows, records)
    if side:
        lines += ["## Beside llama.cpp's own programs (same run, same prompts)", "",
                  "Absolute tokens/s of every method, and per-prompt ratios to llama.cpp's plain decoding "
                  "(`llama-completion`) and to its fastest n-gram mode on this dataset.", ""]
        lines += side
    pos_rows = [r for r in rows if r.dataset != ALL and any(r.by_position.get(j) for j in r.by_position)]
    if pos_rows:
        lines += ["## Acceptance by draft position (%, positions 1..8; L0 = the target's reviews, L1 = the first drafter's)", ""]
        lines.append("| dataset | method | reviewer | acceptance by position |")
        lines.append("|---|---|---|---|")
        for r in pos_rows:
            for j, cells in sorted(r.by_position.items()):
                if cells:
                    lines.append(f"| {r.dataset} | {r.method} | L{j} | {_pos_cell(cells)} |")
        lines.append("")
    cross = [r for r in rows if r.dataset != ALL and r.family != "engine" and r.vs_plain_compared]
    if cross:
        lines += ["## Peers' output against the engine's plain decoding (informational)", "",
                  "Different backends may round differently, so their greedy text can legitimately differ.", ""]
        for r in cross:
            lines.append(f"- {r.method} on {r.dataset}: {r.vs_plain_matches}/{r.vs_plain_compared} identical to `plain`")
        lines.append("")
    if choices:
        lines += ["## Draft lengths chosen on calibration prompts (aggregate tokens/s per grid point)", ""]
        lines.append("| dataset | method | chosen k | tokens/s by k | calibration prompts |")
        lines.append("|---|---|---:|---|---:|")
        for (ds, m), c in sorted(choices.items()):
            grid = ", ".join(f"{k}: {v:.2f}" for k, v in c["tokens_per_second"].items())
            lines.append(f"| {ds} | {m} | {c['length']} | {grid} | {c['prompts']} |")
        lines.append("")
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines)


def plot(rows: Sequence[Row], out_dir: str | Path) -> list[str]:
    """speedup.png (median speedup per method per dataset) and acceptance_by_position.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    datasets = [d for d in dict.fromkeys(r.dataset for r in rows) if d != ALL]
    methods = [m for m in dict.fromkeys(r.method for r in rows if not r.is_baseline)]
    get = {(r.dataset, r.method): r for r in rows}
    if datasets and methods:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods) * max(1, len(datasets)) / 2 + 2), 4.5))
        width = 0.8 / len(datasets)
        for i, ds in enumerate(datasets):
            ys = [get[(ds, m)].speedup_median if (ds, m) in get and get[(ds, m)].speedup_median is not None else 0
                  for m in methods]
            xs = [j + (i - (len(datasets) - 1) / 2) * width for j in range(len(methods))]
            bars = ax.bar(xs, ys, width, label=ds)
            for b, y in zip(bars, ys):
                if y:
                    ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("median speedup over its baseline")
        ax.set_title("Median speedup per method and dataset\n(peers against their own backend's plain decoding)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "speedup.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    levels = sorted({j for r in rows if r.dataset != ALL for j, c in r.by_position.items() if c})
    if datasets and levels:
        fig, axes = plt.subplots(len(levels), len(datasets), figsize=(4.2 * len(datasets), 3.2 * len(levels)),
                                 squeeze=False, sharey=True)
        for a, j in enumerate(levels):
            for b, ds in enumerate(datasets):
                ax = axes[a][b]
                for r in (x for x in rows if x.dataset == ds and x.by_position.get(j)):
                    cells = r.by_position[j]
                    xs = [i + 1 for i, (rev, _) in enumerate(cells) if rev]
                    ys = [ok / rev for rev, ok in cells if rev]
                    ax.plot(xs, ys, marker="o", ms=3, label=r.method)
                ax.set_title(f"{ds}: reviews by L{j}" + (" (target)" if j == 0 else ""), fontsize=9)
                ax.set_xlabel("draft position")
                ax.set_ylim(0, 1.05)
                if b == 0:
                    ax.set_ylabel("drafts accepted through position")
                ax.legend(fontsize=6)
        fig.tight_layout()
        path = out_dir / "acceptance_by_position.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written


def write_summary(records: Sequence[dict], out_dir: str | Path, meta: dict, choices: dict | None = None,
                  order: Sequence[str] | None = None) -> tuple[Path, list[Row]]:
    out_dir = Path(out_dir)
    rows = aggregate(records, order)
    plots = plot(rows, out_dir) if rows else []
    md = render_markdown(rows, meta, choices, plots, calibration_failures(records), records)
    path = out_dir / "summary.md"
    path.write_text(md + "\n")
    return path, rows
