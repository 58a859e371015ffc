"""Where the default drafter's headroom is, from recorded outputs and no models: the suffix drafter as it runs,
the same drafter with its planning made perfect in two ways, llama.cpp's `ngram-mod` policy, and the oracle,
all replayed along the target's greedy outputs (csdrafting.bench.replay) and priced by measured cost curves.

- **default**: the packaged suffix drafter, cost-aware, cap 64 (the Q4_K_M default).
- **breaks foreseen**: its proposals cut before their first wrong token, its confidences left as they are (a
  planner that knew where copies break, but not how sure the rest is).
- **right tokens sure**: its proposals whole, the tokens before the first wrong one at confidence 1 (a planner
  that trusted exactly what would pass, but still paid for the wrong tokens it was offered).
- **perfect planner**: both: the best this drafter's proposals can do; the gap from there to the oracle is
  positions where it proposes nothing right (new text: an added type hint, a reworded answer).
- **ngram-mod**: llama.cpp's `ngram-mod` as `llama-speculative-simple --spec-type ngram-mod` runs it
  (common/speculative.cpp, defaults n_match 24, n_min 48, n_max 64): the last 24 tokens looked up among the
  24-token contexts seen before (the prompt at the start, the output in chunks once 32 new tokens have come),
  their latest continuation chained, a draft of 48-64 tokens or none; its table is exact here (llama.cpp hashes
  into 4M slots) and its reset after 5 poor rounds is left out (these requests are too short to reach it).
- **oracle**: the target's own output as a free draft at its cheapest length under the curve.

    python scripts/replay-bounds.py docs/bench/replay/ref-code docs/bench/replay/ref-spec \
        --curves docs/bench/replay/curves.json [--per-prompt codeedit]

Predictions under the curves (the replay's README says how far they held against measured runs).
"""

import argparse
import statistics
from collections import defaultdict

from csdrafting.bench.replay import load_curves, load_run, oracle, replay, replay_cascade
from csdrafting.cascade.config import CascadeConfig
from csdrafting.cascade.planning import EndStats
from csdrafting.drafters.base import Proposal, StatisticalDrafter
from csdrafting.drafters.suffix import SuffixDrafter, default_calibration


class Knowing(SuffixDrafter):
    """The suffix drafter told, by the reference, which of its proposed tokens the target will accept."""

    def __init__(self, calibration, full: list[int], cut: bool, sure: bool) -> None:
        super().__init__(calibration)
        self.full, self.cut, self.sure = full, cut, sure

    def propose_scored(self, seq, n):
        p = super().propose_scored(seq, n)
        right = 0
        while right < len(p.tokens) and len(seq) + right < len(self.full) and p.tokens[right] == self.full[len(seq) + right]:
            right += 1
        conf = [1.0] * right + p.confidence[right:] if self.sure else list(p.confidence)
        return Proposal(p.tokens[:right], conf[:right]) if self.cut else Proposal(list(p.tokens), conf)


class NgramMod(StatisticalDrafter):
    """llama.cpp's ngram-mod drafting policy (see the module docstring), with an exact table."""

    name = "ngram-mod (emulated)"

    def __init__(self, n_match: int = 24, n_min: int = 48, n_max: int = 64) -> None:
        self.n, self.n_min, self.n_max = n_match, n_min, n_max
        self.table: dict[tuple[int, ...], int] = {}
        self.i_last = 0

    def _add(self, seq, upto: int) -> None:
        for i in range(self.i_last, upto):
            self.table[tuple(seq[i : i + self.n])] = seq[i + self.n]
        self.i_last = max(self.i_last, upto)

    def begin(self, prompt) -> None:
        self.table, self.i_last = {}, 0
        self._add(list(prompt), max(0, len(prompt) - self.n))

    def propose(self, seq, n):
        return self.propose_scored(seq, n).tokens

    def propose_scored(self, seq, n):
        seq = list(seq)
        if len(seq) < self.n:
            return Proposal()
        if self.i_last + 32 < len(seq):
            self._add(seq, len(seq) - self.n)
        ctx, out = seq[-self.n :], []
        for i in range(min(self.n_max, n)):
            t = self.table.get(tuple(ctx[-self.n :]))
            if t is None:
                if i < self.n_min:
                    return Proposal()
                break
            out.append(t)
            ctx.append(t)
        return Proposal(out, [None] * len(out))  # no confidence: drafted whole, as llama.cpp does


ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("runs", nargs="+", help="bench runs with `plain` records (e.g. docs/bench/replay/ref-code)")
ap.add_argument("--curves", required=True, help="cost curves (as csdrafting.bench.replay --curves)")
ap.add_argument("--per-prompt", default="", help="also print every prompt of datasets starting with this")
ap.add_argument("--limit", type=int, default=0, help="at most this many prompts per dataset (0: all)")
a = ap.parse_args()

cal = default_calibration()
refs, eos = [], frozenset()
for run in a.runs:
    got, _, e = load_run(run)
    if a.limit:
        got = [r for i, r in enumerate(got) if sum(q.dataset == r.dataset for q in got[:i]) < a.limit]
    refs += got
    eos |= e
rows = ["default", "breaks foreseen", "right tokens sure", "perfect planner", "ngram-mod", "oracle"]
static = CascadeConfig.make([[64]], dynamic=False)
for cname, curve in load_curves(a.curves).items():
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ends = {k: EndStats() for k in rows[:4]}  # where texts ended, learned along the prompts as the engine does
    for r in refs:
        full = r.prompt + r.output
        drafters = {"default": SuffixDrafter(cal),
                    "breaks foreseen": Knowing(cal, full, cut=True, sure=False),
                    "right tokens sure": Knowing(cal, full, cut=False, sure=True),
                    "perfect planner": Knowing(cal, full, cut=True, sure=True)}
        got = {name: replay(r, d, curve, 64, eos, ends=ends[name]) for name, d in drafters.items()}
        got["ngram-mod"] = replay_cascade(r, [NgramMod()], static, curve, eos)
        got["oracle"] = oracle(r, curve)
        for k, v in got.items():
            per[r.dataset][k].append(v.speedup)
        if a.per_prompt and r.dataset.startswith(a.per_prompt):
            print(f"  {cname} {r.prompt_id}: " + ", ".join(f"{k} {v.speedup:.2f}x" for k, v in got.items()))
    dsets = sorted(per)
    if len(dsets) > 1:  # every prompt pooled, as the "all questions" goal counts them
        for k in rows:
            per["all"][k] = [x for d in dsets for x in per[d][k]]
        dsets.append("all")
    print(f"\n## cost curve {cname} (n=1/16/32: {curve(1) * 1e3:.0f}/{curve(16) * 1e3:.0f}/{curve(32) * 1e3:.0f} ms)\n")
    print("| replayed | " + " | ".join(f"{d} ({len(per[d]['default'])})" for d in dsets) + " |")
    print("|---|" + "---:|" * len(dsets))
    for k in rows:
        print(f"| {k} | " + " | ".join(f"{statistics.median(per[d][k]):.2f}x ({min(per[d][k]):.2f})" for d in dsets) + " |")
    print(f"| default / ngram-mod, per prompt | " + " | ".join(
        f"{statistics.median(x / y for x, y in zip(per[d]['default'], per[d]['ngram-mod'])):.2f}" for d in dsets) + " |")
print("\nmedian predicted decode speedup over plain decoding (worst prompt), greedy")
