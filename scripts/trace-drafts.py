"""Step by step, what the default suffix drafter proposed on a bench run's prompts, and how much of it was right:
the engine replayed along the run's `plain` output under the run's cost curve (csdrafting.bench.replay), every
proposal printed as the planner received it (before it chose how many tokens to send for review).

    python scripts/trace-drafts.py runs/q4-codeedit5 EditEval/2,EditEval/12

Each line: the output position, how many tokens were proposed, how many of them the target's output has there
(what a review would accept), the right part and the first wrong tokens as text, and the confidences of the
right tokens and the first three after them. Then the prompt's replayed speedup over plain decoding, its target
steps, and the drafted and accepted counts. Detokenizes with the packaged 0.5B's vocabulary (the Qwen2.5
tokenizer the default target shares); needs only that file (`csdrafting prepare`).
"""

import argparse

from llama_cpp import Llama

from csdrafting import store
from csdrafting.bench.replay import load_run, replay
from csdrafting.drafters.suffix import SuffixDrafter, default_calibration
from csdrafting.sequences import common_prefix

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run", help="a bench run directory with `plain` records")
ap.add_argument("prompts", help="comma-separated prompt ids, e.g. EditEval/2")
ap.add_argument("--cap", type=int, default=64)
a = ap.parse_args()

vocab = Llama(str(store.model_path("qwen2.5-coder-0.5b", "Q4_K_M")), vocab_only=True, verbose=False)


def text(ids) -> str:
    return repr(vocab.detokenize(list(ids)).decode(errors="replace"))


refs, curve, eos = load_run(a.run)
wanted = a.prompts.split(",")
found = [r for r in refs if r.prompt_id in wanted]
if not found:
    raise SystemExit(f"none of {wanted} among the single-turn plain records of {a.run}")
if curve is None:
    raise SystemExit(f"{a.run} recorded no cost curve")
cal = default_calibration()


class Traced(SuffixDrafter):
    def __init__(self, full: list[int], n_prompt: int) -> None:
        super().__init__(cal)
        self.full, self.n_prompt = full, n_prompt

    def propose_scored(self, seq, n):
        p = super().propose_scored(seq, n)
        if p.tokens:
            i = len(seq)
            right = common_prefix(p.tokens, self.full[i:])
            conf = " ".join(f"{c:.2f}" for c in p.confidence[: right + 3] if c is not None)
            print(f"  at {i - self.n_prompt}: proposed {len(p.tokens)}, right {right}: {text(p.tokens[:right])} | "
                  f"{text(p.tokens[right:right + 6])}  conf {conf}")
        return p


for ref in found:
    print(f"{ref.dataset}/{ref.prompt_id} ({len(ref.output)} tokens):")
    r = replay(ref, Traced(ref.prompt + ref.output, len(ref.prompt)), curve, a.cap, eos)
    print(f"  replayed speedup {r.speedup:.2f}x, {r.steps} target steps, drafted {r.drafted}, accepted {r.accepted}\n")
