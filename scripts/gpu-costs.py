"""Cost of one verification pass on an accelerator, for the Qwen2.5-Coder architectures, without weights.

The packaged weights cannot reach a GPU machine that has no network and takes small uploads; the cost of
a forward pass does not depend on the weights' values, so random weights of the same shapes give the
cost curve ms(n new tokens) that decides whether drafting pays (acceptance needs the real weights:
scripts/gpu-bench.sh). Through the project's own backend (HFCausalLM.extend_argmax), with the KV cache
holding a 200-token prompt.

    python3 scripts/gpu-costs.py [--device cuda] [--dtype bfloat16] [--out costs.json]
    python3 scripts/gpu-costs.py --device cpu --tiny      # a smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from csdrafting.backends.devices import normalize_dtype, torch_device, torch_dtype  # noqa: E402
from csdrafting.backends.hf import HFCausalLM  # noqa: E402

# shapes of Qwen2.5-Coder-1.5B / -0.5B (as in their GGUF metadata); vocabulary 151,936
SHAPES = {
    "qwen2.5-coder-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "qwen2.5-coder-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
}
TINY = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--ns", default="1,2,4,8,12,16,32")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device, dtype = torch_device(a.device), torch_dtype(a.dtype)
    ns = [int(x) for x in a.ns.split(",")]
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (200,), generator=gen).tolist()
    result = {"device": device, "dtype": normalize_dtype(a.dtype), "torch": torch.__version__, "reps": a.reps, "ms": {}}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for name, shape in (TINY if a.tiny else SHAPES).items():
        cfg = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=False, **shape)
        model = HFCausalLM(Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype), name=name)
        model.extend(prompt, logits_from=len(prompt) - 1)
        row = {}
        for n in ns:
            times = []
            for r in range(a.reps + 3):  # 3 warm-ups
                toks = torch.randint(0, 1000, (n,), generator=gen).tolist()
                t0 = time.perf_counter()
                model.extend_argmax(toks)  # returns ids on the host: the pass has finished when it returns
                if r >= 3:
                    times.append(time.perf_counter() - t0)
                model.rollback(len(prompt))
            row[n] = 1000 * statistics.median(times)
        result["ms"][name] = row
        print(f"{name}: " + ", ".join(f"{n}: {ms:.2f} ms" for n, ms in row.items()), flush=True)
        del model
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
