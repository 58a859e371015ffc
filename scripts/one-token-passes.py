"""One-token pass price: timed between passes of other sizes (how cost curves were timed) against consecutive
passes (how plain decoding runs them; llama.cpp reuses the graph of a same-shaped pass). Needs the packaged
Q4_K_M weights (`make models`); about a minute on 2 cores.

    python scripts/one-token-passes.py
"""

import random
import statistics
import time

from csdrafting.backends.llamacpp import LlamaCppModel
from csdrafting.spec import resolve

model = LlamaCppModel(resolve("qwen2.5-coder-1.5b:Q4_K_M", "llamacpp", False), n_threads=2, n_ctx=4096)
ids = [(i * 7919 + 13) % 30000 for i in range(700)]
base = 256
model.extend(ids[:base], logits_from=base - 1)


def timed(tokens):
    t0 = time.perf_counter()
    model.extend(tokens, logits_from=0)
    return time.perf_counter() - t0


between, consecutive = [], []
for _ in range(6):
    for n in random.sample([2, 4, 8, 16, 17, 32, 33], 7):
        timed(ids[base:base + n])  # another shape first
        model.rollback(base)
        between.append(timed([ids[base]]))
        model.rollback(base)
    run = [timed([t]) for t in ids[base:base + 12]]
    consecutive += run[1:]  # the first follows another shape
    model.rollback(base)
b, c = statistics.median(between), statistics.median(consecutive)
print(f"one-token pass after another shape: median {b * 1e3:.1f} ms ({len(between)}); consecutive: {c * 1e3:.1f} ms "
      f"({len(consecutive)}); ratio {c / b:.3f}")
