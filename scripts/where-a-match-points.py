"""Tried 2026-12-03 and not kept: request matches split by where they point, the prompt or the output so far.

    csdrafting calibrate --datasets humaneval,mmlu,mtbench,codeedit,codeedit-lib,specbench-mt_bench,\
specbench-translation,specbench-summarization,specbench-qa,specbench-math_reasoning,specbench-rag \
        --prompts 6 --max-new-tokens 192 --store --out /tmp/unused.json     # once: runs/calibration-texts.jsonl
    python scripts/where-a-match-points.py docs/bench/replay/ref-code runs/q4-spec6

Along the target's outputs, first proposals that continue the output were accepted far less often than those
that continue the prompt (`python scripts/copy-rates.py ...`). This script labels output-pointing request matches
as a source of their own ("out"), calibrates that drafter on the packaged calibration's texts (the target's
greedy outputs cached by the first command, so no target pass runs here) and replays it beside the packaged
drafter along the runs' plain outputs, under the three measured curves of docs/bench/replay/curves.json.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

import csdrafting.drafters.suffix as suffix
from csdrafting.bench.replay import load_curves, load_run, replay
from csdrafting.drafters.suffix import REQUEST, SuffixDrafter, default_calibration
from csdrafting.spec import DEFAULT_TARGET
from csdrafting.tune.calibrate import calibrate_drafter

DATASETS = ("humaneval,mmlu,mtbench,codeedit,codeedit-lib,specbench-mt_bench,specbench-translation,"
            "specbench-summarization,specbench-qa,specbench-math_reasoning,specbench-rag").split(",")


class WhereDrafter(SuffixDrafter):
    """The suffix drafter with request matches that continue the output labelled `out:...`."""

    def next_token(self, prev=None):
        got = super().next_token(prev)
        if got is not None and got[2][0] == REQUEST and self._prompt_len and got[2][1] >= self._prompt_len:
            tok, key, (_, pos, n) = got
            return tok, "out" + key[len(REQUEST):], ("out", pos, n)
        return got


texts = Path("runs/calibration-texts.jsonl")
if not texts.is_file():
    sys.exit(f"{texts} is missing: run the csdrafting calibrate command of this script's docstring first")
packaged = suffix.SuffixDrafter
suffix.SuffixDrafter = WhereDrafter  # the registry builds the calibrating drafter from this name
try:
    where = calibrate_drafter(DEFAULT_TARGET, DATASETS, 6, 192, True, texts)
finally:
    suffix.SuffixDrafter = packaged
print("out-pointing buckets:", {k: v for k, v in sorted(where.counts.items()) if k.startswith("out:")})
refs, eos = [], frozenset()
for run in sys.argv[1:]:
    got, _, e = load_run(run)
    refs += got
    eos |= e
cal = default_calibration()
for cname, curve in load_curves("docs/bench/replay/curves.json").items():
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in refs:
        per[r.dataset]["packaged"].append(replay(r, SuffixDrafter(cal), curve, 64, eos).speedup)
        per[r.dataset]["split by where"].append(replay(r, WhereDrafter(where), curve, 64, eos).speedup)
    print(f"\n## cost curve {cname}: median (geometric mean) predicted decode speedup over plain\n")
    print("| dataset (prompts) | packaged | split by where |\n|---|---:|---:|")
    for d in sorted(per):
        print(f"| {d} ({len(per[d]['packaged'])}) | " + " | ".join(
            f"{statistics.median(v):.3f}x ({statistics.geometric_mean(v):.3f})" for v in per[d].values()) + " |")
