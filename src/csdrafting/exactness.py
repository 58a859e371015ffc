"""Divergence accounting: is a greedy output that differs from plain decoding a numerical tie or a bug?

A backend's logits for one position depend slightly on how the pass that computed them was shaped: plain
decoding feeds one token per pass, a review feeds a batch (llama.cpp picks other matrix kernels for other
batch sizes, and the cache may have been filled either way). When the target's top two tokens are closer
than that noise, plain decoding and a cascade can legitimately pick different tokens.

`examine` looks at the first differing token of two greedy outputs of the same target: it replays plain's
one-token path to that position and a review-shaped batched pass, and reads the target's logits for the two
candidate tokens under both. The divergence is a **tie** when plain's own margin between them is within
the backend's measured batch-shape noise (`measure_batch_noise`, stored per model and precision), and a
**mismatch** otherwise: noise cannot explain it, so it is a bug.

Why plain's margin decides: if noise moves the margin (logit of plain's token minus the other's) by at
most T between the two pass shapes, a batched pass can only prefer the other token when plain's margin is
at most T.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import atomic_write
from .protocol import CSDraftingError, LanguageModel

IDENTICAL, TIE, MISMATCH = "identical", "tie", "mismatch"
VERDICTS = (IDENTICAL, TIE, MISMATCH)

# the review width replayed by `examine`, and the widths `measure_batch_noise` tries by default: the review
# sizes the cost-aware planner uses (a draft of n is reviewed in a pass of n + 1; on the measured curves it
# picks drafts of 1-4, 8, 12, 16, 32 and 64): the noise differs by width (2026-12-02, Q4_K_M: up to 0.604 at
# width 13, where the even widths 2-64 moved margins at most 0.484), so it is measured where reviews happen
DEFAULT_WIDTH = 8
DEFAULT_WIDTHS = (2, 3, 4, 5, 8, 9, 13, 16, 17, 33, 65)
_PACKAGED = Path(__file__).parent / "data" / "batch_noise.json"


@dataclass(frozen=True)
class Divergence:
    """The verdict on one (reference, candidate) pair of greedy outputs of the same target and prompt."""

    verdict: str  # IDENTICAL, TIE or MISMATCH
    position: int | None = None  # first differing generated token
    reference_token: int | None = None  # plain decoding's token there (None: its output ended)
    candidate_token: int | None = None
    single: tuple[float, float] | None = None  # target logits of (reference, candidate) token, one-token path
    batched: tuple[float, float] | None = None  # the same in a review-shaped batched pass
    threshold: float | None = None  # the batch-shape noise the margin was compared with
    reason: str = ""

    @property
    def margin_single(self) -> float | None:
        return None if self.single is None else self.single[0] - self.single[1]

    @property
    def margin_batched(self) -> float | None:
        return None if self.batched is None else self.batched[0] - self.batched[1]

    def to_json(self) -> dict:
        d = asdict(self)
        d["margin_single"] = self.margin_single
        d["margin_batched"] = self.margin_batched
        return d

    def describe(self) -> str:
        if self.verdict == IDENTICAL:
            return "identical"
        head = f"{self.verdict.upper()} at generated token {self.position}"
        if self.single is None:
            return f"{head}: {self.reason}"
        return (f"{head}: plain chose {self.reference_token}, the method {self.candidate_token}; target logits "
                f"{self.single[0]:.5f} vs {self.single[1]:.5f} one token at a time (margin {self.margin_single:.5f}), "
                f"{self.batched[0]:.5f} vs {self.batched[1]:.5f} in a batched pass; batch-shape noise threshold "
                f"{_fmt(self.threshold)}" + (f"; {self.reason}" if self.reason else ""))


def _fmt(x: float | None) -> str:
    return "not measured" if x is None else f"{x:.5f}"


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token; the shorter length if one is a prefix of the other; None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _single_path_row(model: LanguageModel, prompt: Sequence[int], generated: Sequence[int],
                     split_last: bool = False) -> np.ndarray:
    """The row plain decoding used to pick the token after `generated`: prompt in one pass (or, with
    `split_last`, all of it but its last token, then that token alone, as the bench's decode timing
    prefills), then one token per pass."""
    model.rollback(0)
    prefix = list(model.begin(prompt))
    if split_last and len(prefix) > 1:
        model.extend(prefix[:-1], logits_from=len(prefix) - 1)
        row = model.extend(prefix[-1:])[-1]
    else:
        row = model.extend(prefix, logits_from=len(prefix) - 1)[-1]
    for t in generated:
        row = model.extend([int(t)])[-1]
    return np.asarray(row, dtype=np.float64)


def _batched_rows(model: LanguageModel, prompt: Sequence[int], generated: Sequence[int], draft: Sequence[int],
                  width: int) -> np.ndarray:
    """Rows of a review-shaped pass: cache filled in batches of `width`, then [last token] + draft in one pass.

    Row j predicts the token after generated + draft[:j].
    """
    model.rollback(0)
    ctx = list(model.begin(prompt)) + [int(t) for t in generated]
    body = ctx[:-1]
    n_prefix = len(ctx) - len(generated)
    if n_prefix - 1 > 0:
        model.extend(body[: n_prefix - 1], logits_from=n_prefix - 1)
    for s in range(n_prefix - 1, len(body), width):
        chunk = body[s : s + width]
        model.extend(chunk, logits_from=len(chunk))
    return np.asarray(model.extend([ctx[-1]] + [int(t) for t in draft], logits_from=0), dtype=np.float64)


def examine(model: LanguageModel, prompt: Sequence[int], reference: Sequence[int], candidate: Sequence[int],
            threshold: float | None, width: int = DEFAULT_WIDTH, split_last: bool = False) -> Divergence:
    """Classify `candidate` (a method's greedy output) against `reference` (plain greedy decoding of `model`).

    `threshold` is the model's measured batch-shape noise (`noise_threshold`); None means it was never
    measured, and then no divergence can be called a tie. `split_last`: plain decoding prefilled the prompt
    but its last token first (the bench's decode timing). Leaves the model's cache in an arbitrary state.
    """
    i = first_difference(reference, candidate)
    if i is None:
        return Divergence(IDENTICAL)
    ref = int(reference[i]) if i < len(reference) else None
    cand = int(candidate[i]) if i < len(candidate) else None
    if ref is None or cand is None:
        # one output stops where the other goes on without an EOS choice between them: max_new_tokens or a
        # bookkeeping error, never a near-tie of two tokens
        return Divergence(MISMATCH, i, ref, cand, threshold=threshold,
                          reason=f"one output is a prefix of the other ({len(reference)} vs {len(candidate)} tokens)")
    common = list(reference[:i])
    single = _single_path_row(model, prompt, common, split_last)
    batched = _batched_rows(model, prompt, common, list(candidate[i : i + width - 1]), width)[0]
    s = (float(single[ref]), float(single[cand]))
    b = (float(batched[ref]), float(batched[cand]))
    notes = []
    if int(np.argmax(single)) != ref:
        notes.append(f"replaying plain decoding chose {int(np.argmax(single))}, not {ref}: the backend is not deterministic")
    if b[0] - b[1] < 0:
        notes.append("the batched pass reproduces the flip")
    tie = threshold is not None and int(np.argmax(single)) == ref and s[0] - s[1] <= threshold
    if threshold is None:
        notes.append("batch-shape noise of this model was never measured: run `csdrafting bench noise`")
    return Divergence(TIE if tie else MISMATCH, i, ref, cand, s, b, threshold, "; ".join(notes))


# ------------------------------------------------------------------------------------------------ noise


@dataclass
class BatchNoise:
    """Batch-shape noise of one model: |top-2 margin one token at a time - the same margin in a batch|."""

    model: str  # the model's label, e.g. "qwen2.5-coder-1.5b [Q4_K_M]"
    threshold: float  # what `examine` compares margins with: the largest difference observed
    max: float
    p999: float
    mean: float
    positions: int  # (position, width) pairs measured
    widths: list[int]
    prompts: int
    measured: str = ""
    by_width: dict[str, float] = field(default_factory=dict)  # width -> max difference

    def to_json(self) -> dict:
        return asdict(self)


def measure_batch_noise(model: LanguageModel, prompts: Sequence[Sequence[int]], positions: int = 64,
                        widths: Sequence[int] = DEFAULT_WIDTHS, progress=None) -> BatchNoise:
    """Decode `positions` tokens greedily after each prompt one token at a time, then recompute every
    position in review-shaped batches of each width; the difference of the top-2 margin (of the one-token
    row's two best tokens) between the two paths, over all positions, widths and prompts.
    """
    if not prompts or positions < 1 or not widths or min(widths) < 2:
        raise CSDraftingError("noise measurement needs prompts, positions >= 1 and widths >= 2")
    diffs: list[float] = []
    by_width: dict[str, float] = {}
    for n, prompt in enumerate(prompts):
        model.rollback(0)
        prefix = list(model.begin(prompt))
        row = model.extend(prefix, logits_from=len(prefix) - 1)[-1]
        gen: list[int] = []
        top: list[tuple[int, int, float]] = []  # per position: best, second, margin (one-token path)
        eos = model.info.eos_token_ids
        while len(gen) < positions:
            a, b = (int(x) for x in np.argsort(row)[-2:][::-1])
            top.append((a, b, float(row[a]) - float(row[b])))
            gen.append(a)
            if a in eos:
                break
            row = model.extend([a])[-1]
        for w in widths:
            model.rollback(0)
            ctx = prefix + gen
            if len(prefix) > 1:
                model.extend(prefix[:-1], logits_from=len(prefix) - 1)
            # passes [ctx[s-1]] + gen[s : s+w-1]: the review of a fully accepted draft starting at s
            for s in range(0, len(gen), w):
                feed = [ctx[len(prefix) + s - 1]] + gen[s : s + w - 1]
                rows = model.extend(feed, logits_from=0)
                for j in range(len(feed)):
                    p = s + j
                    if p >= len(top):
                        break
                    a, b, m = top[p]
                    d = abs(m - (float(rows[j][a]) - float(rows[j][b])))
                    diffs.append(d)
                    by_width[str(w)] = max(by_width.get(str(w), 0.0), d)
            if progress:
                progress(f"prompt {n + 1}/{len(prompts)}, width {w}: max so far {max(diffs):.5f}")
    arr = np.asarray(diffs)
    return BatchNoise(
        model=model.info.label, threshold=float(arr.max()), max=float(arr.max()),
        p999=float(np.percentile(arr, 99.9)), mean=float(arr.mean()), positions=len(diffs),
        widths=[int(w) for w in widths], prompts=len(prompts),
        measured=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), by_width=by_width,
    )


def _machine_file() -> Path:
    from .store.paths import cache_dir

    return cache_dir() / "batch_noise.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise CSDraftingError(f"{path} is not valid JSON ({exc}); delete it and rerun `csdrafting bench noise`") from None


def noise_table() -> dict[str, dict]:
    """Measured noise per model label: the packaged measurements, overridden by this machine's own."""
    return {**_read(_PACKAGED), **_read(_machine_file())}


def noise_threshold(model_or_label) -> float | None:
    """The tie threshold of a model (a LanguageModel or its label), or None if never measured."""
    label = model_or_label if isinstance(model_or_label, str) else model_or_label.info.label
    entry = noise_table().get(label)
    return None if entry is None else float(entry["threshold"])


def save_noise(noise: BatchNoise, path: Path | None = None) -> Path:
    """Record a measurement in this machine's table (the cache directory), replacing the model's entry."""
    path = path or _machine_file()
    table = _read(path)
    table[noise.model] = noise.to_json()
    atomic_write(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return path


@dataclass
class Tally:
    """Identical / tie-divergent / mismatched counts of one method on one dataset."""

    identical: int = 0
    tie: int = 0
    mismatch: int = 0

    def add(self, verdict: str) -> None:
        if verdict not in VERDICTS:
            raise CSDraftingError(f"unknown verdict {verdict!r}")
        setattr(self, verdict, getattr(self, verdict) + 1)

    @property
    def total(self) -> int:
        return self.identical + self.tie + self.mismatch

    def cell(self) -> str:
        return f"{self.identical} / {self.tie} / {self.mismatch}" + (" ⚠️" if self.mismatch else "")
