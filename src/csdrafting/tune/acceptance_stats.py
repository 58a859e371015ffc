"""Acceptance measured on calibration prompts: per (reviewer, drafter) pair, per draft position.

(Statistics for the tuner; the acceptance RULES the engine applies are cascade/acceptance.py.)

How (greedy decoding, lenience 1):
1. The target's greedy continuation y of each calibration prompt is generated (by any exact cascade: the
   output is the target's greedy text whatever drafts it, so a cheap one is used to save time).
2. Every neural candidate reads prompt + y in ONE teacher-forced pass; g_M[t] = argmax of its row
   predicting y[t] is what M would say at that point of the target's path (g_target = y).
3. Every statistical candidate (drafters/registry.py) is asked for a proposal m_t of up to `span` tokens
   at every position t of y.
4. From a start t, a neural drafter D reviewed by R keeps being accepted while g_D == g_R; a statistical
   drafter's proposal m_t while m_t[i] == g_R[t + i]. Run lengths from every start give, per position i, how many
   drafts reached position i (N_i) and how many were accepted there (A_i): the conditional acceptance
   alpha(i) = A_i / N_i, shrunk toward alpha(i - 1) where data are thin. Runs cut off by the end of a
   continuation are counted only as far as they were observed.

Assumptions (stated where the model uses them):
- Predictions along the target's path stand for those along a reviewer's own path. This is exact for
  the target as reviewer; for an intermediate reviewer R its draft may leave the target's path where R
  disagrees with the target, but from there on nothing it drafts is accepted by the target anyway.
- A draft of D reviewed by R, starting at t, is D's greedy continuation; with lenience 1 a neural level
  always hands upward its own greedy tokens, however it produced them.
- Drafts start at every position with equal weight (in a running cascade they start after a correction
  or after a fully accepted draft). For the target as reviewer the starts are also split by whether the
  pair agreed at the position before ("restart" profiles), which the model weighs as a Markov chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..drafters.base import StatisticalDrafter
from ..drafters.maxgram import SuffixAutomaton
from ..drafters.registry import is_statistical
from ..protocol import CSDraftingError, LanguageModel
from .costs import time_prefill
from .speed import Profile


@dataclass
class Trace:
    """One calibration prompt: the target's greedy continuation and everyone's predictions along it."""

    prompt: list[int]
    tokens: list[int]  # y, the target's greedy continuation
    greedy: dict[str, np.ndarray] = field(default_factory=dict)  # model -> g_M[t] for t = 0..len(y)-1
    proposals: dict[str, list[list[int]]] = field(default_factory=dict)  # statistical drafter -> proposal at each t
    match_length: list[int] = field(default_factory=list)  # longest earlier match of the text before each t
    seconds: float = 0.0  # wall time of generating y
    helper: str = ""  # which cascade generated y


def teacher_forced_greedy(model: LanguageModel, prompt: Sequence[int], tokens: Sequence[int]) -> tuple[np.ndarray, float]:
    """argmax predictions of `model` for each of `tokens` after `prompt`, and the prompt's prefill seconds."""
    first, pre = time_prefill(model, prompt)
    preds = [int(np.argmax(first))]
    if len(tokens) > 1:
        rows = model.extend(list(tokens[:-1]), logits_from=0)
        preds.extend(int(i) for i in np.argmax(rows, axis=1))
    model.rollback(0)
    return np.array(preds, dtype=np.int64), pre


def proposals_along(drafter: StatisticalDrafter, prompt: Sequence[int], tokens: Sequence[int], span: int) -> list[list[int]]:
    """The drafter's proposal (up to `span` tokens) at every position of `tokens` after `prompt`."""
    seq = [int(t) for t in prompt]
    drafter.begin(seq)
    props = []
    for t in tokens:
        props.append(list(drafter.propose(seq, span)))
        seq.append(int(t))
    return props


def match_lengths(prompt: Sequence[int], tokens: Sequence[int]) -> list[int]:
    """At every position of `tokens`, the length of the longest suffix of the text so far seen earlier in it
    (what a copying drafter copies from)."""
    index = SuffixAutomaton()
    for t in prompt:
        index.append(int(t))
    out = []
    for t in tokens:
        out.append(index.longest_earlier_match()[0])
        index.append(int(t))
    return out


def record_traces(
    target: LanguageModel,
    neural: Mapping[str, LanguageModel],
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    generate: Callable[[list[int]], tuple[list[int], float]],
    statistical: Mapping[str, StatisticalDrafter] | None = None,
    span: int = 48,
    target_name: str = "target",
    tick: Callable[[str], None] | None = None,
) -> tuple[list[Trace], dict[str, list[tuple[int, float]]]]:
    """Traces of every prompt, and prefill timings (prompt tokens, seconds) per neural model.

    `generate(prompt) -> (target's greedy tokens, seconds)` produces y (any exact cascade will do).
    """
    traces: list[Trace] = []
    prefill: dict[str, list[tuple[int, float]]] = {name: [] for name in neural}
    for prompt in prompts:
        prompt = [int(t) for t in prompt]
        y, secs = generate(prompt)
        if not y:
            raise CSDraftingError("the target generated nothing for a calibration prompt")
        tr = Trace(prompt, list(y), seconds=secs)
        tr.greedy[target_name] = np.array(y, dtype=np.int64)
        if tick:
            tick("generate")
        for name, model in neural.items():
            g, pre = teacher_forced_greedy(model, prompt, y)
            tr.greedy[name] = g
            prefill[name].append((len(prompt), pre))
            if tick:
                tick(name)
        for name, drafter in (statistical or {}).items():
            tr.proposals[name] = proposals_along(drafter, prompt, y, span)
        if statistical:
            tr.match_length = match_lengths(prompt, y)
        traces.append(tr)
    return traces, prefill


# ------------------------------------------------------------------------------------------------ profiles


def _runs_neural(g_reviewer: np.ndarray, g_drafter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each start t: run length of agreement from t, and how many positions were observable."""
    agree = g_reviewer == g_drafter
    n = len(agree)
    run = np.zeros(n, dtype=np.int64)
    acc = 0
    for t in range(n - 1, -1, -1):
        acc = acc + 1 if agree[t] else 0
        run[t] = acc
    observed = n - np.arange(n)
    return run, observed


def _runs_proposals(g_reviewer: np.ndarray, proposals: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    n = len(g_reviewer)
    run = np.zeros(n, dtype=np.int64)
    observed = np.zeros(n, dtype=np.int64)
    for t, prop in enumerate(proposals):
        obs = min(len(prop), n - t)
        i = 0
        while i < obs and prop[i] == g_reviewer[t + i]:
            i += 1
        run[t], observed[t] = i, obs
    return run, observed


def profile_from_runs(runs: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int = 64, shrink: float = 4.0) -> tuple[Profile, dict]:
    """Conditional per-position acceptance from (run length, observed length) pairs of every start.

    N_i = starts whose position i was observed and positions < i accepted; A_i = those accepted at i.
    alpha(1) = (A_1 + 1) / (N_1 + 2); alpha(i) = (A_i + shrink * alpha(i-1)) / (N_i + shrink).
    """
    run = np.concatenate([r for r, _ in runs]) if runs else np.zeros(0, dtype=np.int64)
    obs = np.concatenate([o for _, o in runs]) if runs else np.zeros(0, dtype=np.int64)
    alphas, ns, accs = [], [], []
    prev = None
    for i in range(1, max_len + 1):
        reach = (run >= i - 1) & (obs >= i)
        n_i = int(reach.sum())
        a_i = int((reach & (run >= i)).sum())
        if n_i == 0:
            break
        a = (a_i + 1) / (n_i + 2) if prev is None else (a_i + shrink * prev) / (n_i + shrink)
        alphas.append(a)
        ns.append(n_i)
        accs.append(a_i)
        prev = a
    if not alphas:
        alphas = [0.5]
    return Profile(tuple(alphas)), {"reached": ns, "accepted": accs}


def _split_by_previous(runs: Sequence[tuple[np.ndarray, np.ndarray]]):
    """Starts right after a position the pair disagreed on (or the first), and after one it agreed on."""
    miss, hit = [], []
    for run, obs in runs:
        prev_agreed = np.concatenate([[False], run[:-1] > 0])
        miss.append((run[~prev_agreed], obs[~prev_agreed]))
        hit.append((run[prev_agreed], obs[prev_agreed]))
    return miss, hit


def estimate_profiles(
    traces: Sequence[Trace],
    reviewers: Sequence[str],
    drafters: Sequence[str],
    max_len: int = 64,
    restart_for: str | None = None,
) -> tuple[dict[tuple[str, str], Profile], dict, dict[tuple[str, str], tuple[Profile, Profile]]]:
    """Profiles for every (reviewer, drafter) pair with reviewer != drafter; a statistical drafter is judged
    by the proposals the traces hold for it.

    For pairs reviewed by `restart_for` (the target) also the restart profiles: drafts starting right
    after a position the pair disagreed on (a draft after a correction) and after one it agreed on (a
    draft after a fully accepted one). Disagreements cluster, so these differ markedly.
    """
    out: dict[tuple[str, str], Profile] = {}
    restart: dict[tuple[str, str], tuple[Profile, Profile]] = {}
    stats: dict = {}
    for r in reviewers:
        for d in drafters:
            if d == r:
                continue
            if is_statistical(d):
                runs = [_runs_proposals(tr.greedy[r], tr.proposals[d]) for tr in traces if d in tr.proposals]
            else:
                runs = [_runs_neural(tr.greedy[r], tr.greedy[d]) for tr in traces]
            prof, st = profile_from_runs(runs, max_len)
            out[(r, d)] = prof
            stats[f"{d} reviewed by {r}"] = {"alphas": prof.to_json(), **st}
            if r == restart_for:
                miss, hit = _split_by_previous(runs)
                (pm, sm), (ph, sh) = profile_from_runs(miss, max_len), profile_from_runs(hit, max_len)
                restart[(r, d)] = (pm, ph)
                stats[f"{d} reviewed by {r}"].update(after_miss=pm.to_json(), after_miss_reached=sm["reached"],
                                                     after_hit=ph.to_json(), after_hit_reached=sh["reached"])
    return out, stats, restart


def by_match_length(traces: Sequence[Trace], reviewer: str, drafter: str,
                    buckets: Sequence[int] = (0, 1, 2, 4, 8, 16)) -> list[dict]:
    """A statistical drafter's first-token acceptance and mean accepted run, by the length of the longest
    earlier match at the position (what Max-Gram copies from)."""
    rows = []
    edges = list(buckets) + [10**9]
    for lo, hi in zip(edges, edges[1:]):
        first, runs = [], []
        for tr in traces:
            if drafter not in tr.proposals:
                continue
            run, _ = _runs_proposals(tr.greedy[reviewer], tr.proposals[drafter])
            for t, m in enumerate(tr.match_length):
                if lo <= m < hi:
                    first.append(run[t] > 0)
                    runs.append(run[t])
        label = f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}")
        rows.append({"match_length": label, "starts": len(first),
                     "first_token_acceptance": float(np.mean(first)) if first else None,
                     "mean_accepted": float(np.mean(runs)) if runs else None})
    return rows


def agreement(traces: Sequence[Trace], a: str, b: str) -> float:
    """Share of positions where a and b predict the same token (along the target's path)."""
    num = sum(int((tr.greedy[a] == tr.greedy[b]).sum()) for tr in traces)
    den = sum(len(tr.tokens) for tr in traces)
    return num / den if den else 0.0

