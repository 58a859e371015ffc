"""One-token pass price: timed between passes of other sizes (how cost curves were timed) against consecutive
passes (how plain decoding runs them; llama.cpp reuses the graph of a same-shaped pass). Needs the packaged
Q4_K_M weights (`make models`); about a minute on 2 cores.

    python scripts/one-token-passes.py
"""
import time, statistics, random
from csdrafting.spec import resolve
from csdrafting.backends.llamacpp import LlamaCppModel
m = LlamaCppModel(resolve("qwen2.5-coder-1.5b:Q4_K_M", "llamacpp", False), n_threads=2, n_ctx=4096)
ids = [(i * 7919 + 13) % 30000 for i in range(700)]
m.extend(ids[:256], logits_from=255)
base = 256
between, consec = [], []
for rep in range(6):
    for n in random.sample([2, 4, 8, 16, 17, 32, 33], 7):
        m.extend(ids[base:base + n], logits_from=0); m.rollback(base)
        t0 = time.perf_counter(); m.extend([ids[base]], logits_from=0); between.append(time.perf_counter() - t0); m.rollback(base)
    ts = []
    for t in ids[base:base + 12]:
        t0 = time.perf_counter(); m.extend([t], logits_from=0); ts.append(time.perf_counter() - t0)
    consec += ts[1:]
    m.rollback(base)
print(f"one-token pass after another shape: median {statistics.median(between)*1e3:.1f} ms ({len(between)}); consecutive: {statistics.median(consec)*1e3:.1f} ms ({len(consec)}); ratio {statistics.median(consec)/statistics.median(between):.3f}")
