"""Two methods of one bench run against each other, prompt by prompt: decode time of B over A per prompt.

    python scripts/paired.py docs/bench/q4-spec7 cfg:q4-suffix-learn-up csd

Per dataset: the median and geometric mean over prompts of time(A) / time(B), i.e. how much faster B ran than A
on the same prompt (above 1: B faster), and on how many prompts B was faster. A conversation's turns and a
prompt's repeated rounds are summed. Reads `records.jsonl` or `records.jsonl.gz`.
"""

import gzip
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

run, slow, fast = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
path = run / "records.jsonl"
text = path.read_text() if path.is_file() else gzip.decompress((run / "records.jsonl.gz").read_bytes()).decode()
seconds: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
for line in text.splitlines():
    r = json.loads(line) if line.strip() else None
    if r and r["phase"] == "eval" and r["method"] in (slow, fast):
        seconds[(r["dataset"], r["prompt_id"])][r["method"]] += r["decode_seconds"]
per: dict[str, list[float]] = defaultdict(list)
for (dataset, _), s in sorted(seconds.items()):
    if slow in s and fast in s:
        per[dataset].append(s[slow] / s[fast])
every = [x for xs in per.values() for x in xs]
print(f"decode time of {slow} over {fast}, per prompt (above 1: {fast} faster)")
for name, xs in [*sorted(per.items()), ("all", every)]:
    print(f"{name:28s} {len(xs):3d} prompts  median {statistics.median(xs):.3f}  geometric mean "
          f"{statistics.geometric_mean(xs):.3f}  {fast} faster on {sum(x > 1 for x in xs)}")
