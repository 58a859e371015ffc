"""The target's review price by context length: seconds of one pass over n new tokens after 256, 1,024 and
2,048 cached tokens (cost curves are measured after 256). Needs the packaged Q4_K_M weights (`make models`);
about five minutes on 2 cores; 5 interleaved rounds, medians.

    python scripts/context-cost.py
"""

import random
import statistics
import time

from csdrafting.backends.llamacpp import LlamaCppModel
from csdrafting.spec import resolve

GRID = (1, 2, 4, 8, 16, 32, 64)
model = LlamaCppModel(resolve("qwen2.5-coder-1.5b:Q4_K_M", "llamacpp", False), n_threads=2, n_ctx=4096)
ids = [(i * 7919 + 13) % 30000 for i in range(2200)]
CONTEXTS = (256, 1024, 2048)
times = {(c, n): [] for c in CONTEXTS for n in GRID}
for _ in range(5):  # rounds; within each the contexts and sizes in random order, so drift falls on all alike
    for cached in random.sample(CONTEXTS, len(CONTEXTS)):
        model.rollback(0)
        model.extend(ids[:cached], logits_from=cached - 1)
        model.extend(ids[cached:cached + 4], logits_from=0)  # warm the shapes once
        model.rollback(cached)
        for n in random.sample(GRID, len(GRID)):
            t0 = time.perf_counter()
            model.extend(ids[cached:cached + n], logits_from=0)
            times[(cached, n)].append(time.perf_counter() - t0)
            model.rollback(cached)
ms = {k: 1000 * statistics.median(t) for k, t in times.items()}
for cached in CONTEXTS:
    print(f"{cached:5d} cached: " + "  ".join(f"n={n}: {ms[(cached, n)]:.0f} ms ({ms[(cached, n)] / ms[(256, n)] - 1:+.0%})"
                                             for n in GRID))
