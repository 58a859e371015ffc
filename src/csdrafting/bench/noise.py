"""`csdrafting bench noise`: measure a model's batch-shape noise, the threshold that tells a numerical tie
from a bug (csdrafting.exactness).

    csdrafting bench noise --model qwen2.5-coder-1.5b:Q4_K_M
    csdrafting bench noise --model qwen2.5-coder-1.5b:F32 --prompts 2 --positions 48

Prompts come from the calibration split of HumanEval (raw text) and MT-Bench (chat template), alternating.
The result is stored in this machine's table (<cache>/batch_noise.json, or --out), which the bench, the
demo and the tests read through `exactness.noise_threshold`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..exactness import DEFAULT_WIDTHS
from ..protocol import CSDraftingError, run_guarded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csdrafting bench noise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a store model NAME:TIER or a .gguf path (the target to measure)")
    p.add_argument("--backend", default="llamacpp", choices=["llamacpp", "hf"])
    p.add_argument("--prompts", type=int, default=4, help="real prompts (default 4)")
    p.add_argument("--positions", type=int, default=64, help="generated positions per prompt (default 64)")
    widths = ",".join(map(str, DEFAULT_WIDTHS))
    p.add_argument("--widths", default=widths, help=f"batch widths of the review-shaped passes (default {widths}: the "
                   "review sizes the cost-aware planner uses)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="the table to update (default: this machine's, in the cache directory)")
    return p


def prompts_for(model, n: int) -> list[list[int]]:
    from ..text import chat_prompt, encode
    from ..datasets import load

    code = load("humaneval", limit=n, split="calibration")
    chat = load("mtbench", lambda u: u, limit=n, split="calibration")
    out: list[list[int]] = []
    for i in range(n):
        if i % 2 == 0 and i // 2 < len(code):
            out.append(encode(model, code[i // 2].text))
        elif i // 2 < len(chat):
            out.append(encode(model, chat_prompt(model, chat[i // 2].messages[0][1])))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: measure(args))


def measure(args) -> int:
    widths = tuple(int(w) for w in args.widths.split(",") if w.strip())
    if args.prompts < 1 or args.positions < 1 or not widths or min(widths) < 2:
        raise CSDraftingError("--prompts and --positions must be >= 1 and every width >= 2")
    from ..exactness import measure_batch_noise, save_noise
    from ..spec import load_model

    model = load_model(args.model, args.backend, args.threads, 4096)
    prompts = prompts_for(model, args.prompts)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    say(f"measuring batch-shape noise of {model.info.label}: {len(prompts)} prompts x {args.positions} positions, "
        f"widths {list(widths)}")
    noise = measure_batch_noise(model, prompts, args.positions, widths, progress=say)
    path = save_noise(noise, Path(args.out) if args.out else None)
    print(json.dumps(noise.to_json(), indent=1))
    say(f"threshold {noise.threshold:.5f} (max; 99.9th percentile {noise.p999:.5f}) stored in {path}")
    return 0
