"""Greedy output of every configuration equals the target's own greedy decoding (transformers generate).

Tiny random models (float64) built in-process; drafters are noisy copies of the target so that drafts are
partly accepted and every branch of the review (accept, correct, bonus, EOS inside a draft) is exercised.
"""

import copy

import numpy as np
import pytest
import torch

import table_lm
import tiny
from csdrafting import Cascade, CascadeConfig, MaxGram, generate
from csdrafting.bench.methods import Oracle

PROMPTS = [
    [1, 5, 6, 7, 8, 5, 6, 7, 9, 10, 11, 12, 5, 6],
    [1, 30, 31, 32, 33, 34, 35, 30, 31, 32],
    [1, 70, 3, 70, 3, 70],
]
N_NEW = 40

# (K, spelling, lenience) for a target + 2 neural drafters + Max-Gram (3x3 K)
THREE_LEVEL = [
    ([[5, 14, 10], [0, 1, 10], [0, 0, 10]], "increments", 2),  # the authors' FLAN-T5 setting
    ([[5, 8, 10], [0, 1, 10], [0, 0, 10]], "increments", 5),
    ([[3, 3, 3], [0, 2, 4], [0, 0, 3]], "cumulative", 1),  # purely vertical: only D1 drafts for the target
    ([[2, 5, 7], [0, 3, 3], [0, 0, 6]], "cumulative", 3),  # horizontal split at every row
    ([[1, 4, 9], [0, 2, 2], [0, 0, 1]], "cumulative", 4),
]


def _family(make, scales=(0.01, 0.02)):
    target = make(0)
    drafters = [tiny.perturbed(target, s, seed=i + 1) for i, s in enumerate(scales)]
    return target, drafters


def _reference(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0].tolist()
    return out[1:] if model.config.is_encoder_decoder else out[len(prompt):]


def _with_eos(model, eos):
    m = copy.deepcopy(model)
    m.config.eos_token_id = eos
    m.generation_config.eos_token_id = eos
    return m


@pytest.fixture(scope="module", params=["decoder-only", "encoder-decoder"])
def family(request):
    make = tiny.causal if request.param == "decoder-only" else tiny.seq2seq
    target, drafters = _family(make)
    return request.param, target, drafters


def _run_all(target, drafters, prompt, n, expect):
    T = tiny.wrap(target, "target")
    D1, D2 = (tiny.wrap(d, f"d{i + 1}") for i, d in enumerate(drafters))
    runs = {
        "plain": generate(T, prompt, max_new_tokens=n),
        "speculative k=1": generate(T, prompt, [D1], k=[[1]], max_new_tokens=n),
        "speculative k=4": generate(T, prompt, [D1], k=[[4]], max_new_tokens=n),
        "speculative small k=6": generate(T, prompt, [D2], k=[[6]], max_new_tokens=n),
        "maxgram only": generate(T, prompt, [MaxGram()], k=[[5]], max_new_tokens=n),
        "maxgram fixed length": Cascade(T, [D1, MaxGram()], CascadeConfig.make([[4, 4], [0, 3]], bottom_length=2)).generate(prompt, n),
        "2 drafters vertical": generate(T, prompt, [D1, D2], k=[[4, 4], [0, 3]], max_new_tokens=n),
        "2 drafters horizontal": generate(T, prompt, [D1, D2], k=[[2, 6], [0, 3]], max_new_tokens=n, lenience=2),
        "horizontal only (zero K row: D1 drafts by itself)": generate(T, prompt, [D1, D2], k=[[2, 6], [0, 0]], max_new_tokens=n),
        "1 drafter + maxgram, authors' llama K": generate(
            T, prompt, [D1, MaxGram()], k=[[13, 10], [0, 10]], k_spelling="increments", lenience=3, max_new_tokens=n
        ),
    }
    for k, spelling, lenience in THREE_LEVEL:
        runs[f"3 drafters K={k} {spelling} l={lenience}"] = generate(
            T, prompt, [D1, D2, MaxGram()], k=k, k_spelling=spelling, lenience=lenience, max_new_tokens=n
        )
    for lenience in (1, 2, 3, 4, 5):
        runs[f"2 drafters + maxgram l={lenience}"] = generate(
            T, prompt, [D1, D2, MaxGram()], k=[[2, 6, 8], [0, 2, 4], [0, 0, 4]], lenience=lenience, max_new_tokens=n
        )
    for name, r in runs.items():
        assert r.tokens == expect, f"{name}: {r.tokens} != {expect}"
    return runs


# every configuration on every prompt is a long sweep (minutes on 2 cores): the shortest prompt stays in
# the fast suite, the others are `slow`
@pytest.mark.parametrize("prompt", [pytest.param(p, marks=[pytest.mark.slow] if i < 2 else []) for i, p in enumerate(PROMPTS)])
def test_greedy_equals_target_generate(family, prompt):
    _, target, drafters = family
    expect = _reference(target, prompt, N_NEW)
    runs = _run_all(target, drafters, prompt, N_NEW, expect)
    # the drafts were really used: some drafted tokens were accepted somewhere
    assert sum(r.metrics.levels[1].accepted for name, r in runs.items() if name != "plain") > 0


def test_greedy_with_eos_inside_drafts(family):
    """Generation ends at the EOS exactly where plain decoding ends, even when the EOS is drafted."""
    kind, target, drafters = family
    prompt = PROMPTS[0]
    free = _reference(_with_eos(target, 95 if kind == "decoder-only" else 94), prompt, N_NEW)
    # pick as EOS a token that greedy decoding emits for the first time a few steps in
    pos = next(i for i in range(4, len(free)) if free[i] not in free[:i])
    eos = free[pos]
    target_e = _with_eos(target, eos)
    drafters_e = [_with_eos(d, eos) for d in drafters]
    expect = _reference(target_e, prompt, N_NEW)
    assert expect == free[: pos + 1] and expect[-1] == eos
    runs = _run_all(target_e, drafters_e, prompt, N_NEW, expect)
    assert all(r.finish_reason == "eos" for r in runs.values())


def test_never_past_max_new_tokens(family):
    _, target, drafters = family
    T, D1 = tiny.wrap(target, "t"), tiny.wrap(drafters[0], "d1")
    for n in (1, 2, 3, 7):
        expect = _reference(target, PROMPTS[2], n)
        r = generate(T, PROMPTS[2], [D1, MaxGram()], k=[[6, 12], [0, 8]], max_new_tokens=n)
        assert r.tokens == expect and len(r.tokens) <= n


def test_metrics_account_for_the_work():
    target, drafters = _family(tiny.causal)
    T, D1, D2 = tiny.wrap(target, "t"), tiny.wrap(drafters[0], "d1"), tiny.wrap(drafters[1], "d2")
    r = generate(T, PROMPTS[0], [D1, D2, MaxGram()], k=[[2, 6, 8], [0, 2, 4], [0, 0, 4]], max_new_tokens=30)
    m = r.metrics
    assert m.new_tokens == len(r.tokens)
    assert m.levels[0].forward_passes == m.levels[0].reviews == m.target_steps
    # every target review emits accepted + 1 tokens (the last one may be cut by max_new_tokens)
    assert sum(m.levels[0].accepted_by_position) + m.target_steps >= m.new_tokens
    for lv in m.levels[1:]:
        assert 0 <= lv.accepted <= lv.drafted
    for lv in m.levels:
        assert all(a <= d for a, d in zip(lv.accepted_by_position, lv.reviewed_by_position))
        # acceptance by position can only fall: position i+1 is reviewed only if i was accepted
        assert all(lv.reviewed_by_position[i + 1] <= lv.accepted_by_position[i] + lv.reviews for i in range(len(lv.reviewed_by_position) - 1))
    assert m.standardized_cost == sum(lv.forward_passes * lv.n_params for lv in m.levels[:3])
    assert m.levels[3].proposals > 0 and m.levels[3].n_params == 0


class _Recording(table_lm.TableLM):
    """A table model that keeps every batch of tokens it was asked to run."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.batches: list[list[int]] = []

    def extend(self, tokens, logits_from=0):
        self.batches.append([int(t) for t in tokens])
        return super().extend(tokens, logits_from)


def test_a_drafted_eos_is_left_to_the_reviewer():
    """A drafted EOS never reaches the target: its pass yields its own token after the draft anyway, so the
    draft stops before the EOS (greedy; under sampling only a statistical level's, see test_sampling_exact),
    the output still ends where plain decoding ends, and the last review is one token narrower."""
    table = np.random.default_rng(11).normal(0, 1.5, size=(8, 8, 8))  # greedy: 15 tokens, then EOS
    table[:, :, 0] -= 20  # EOS (0) only after token 5, so greedy text ends after a few tokens
    table[:, 5, 0] += 40
    prompt = [1, 2, 3, 4]
    plain = generate(_Recording(table, "t"), prompt, max_new_tokens=30)
    assert plain.finish_reason == "eos" and plain.tokens[-1] == 0 and len(plain.tokens) == 15
    oracle = Oracle()
    oracle.set_reference(prompt, plain.tokens)
    for name, drafter in (("statistical", oracle), ("neural", table_lm.TableLM(table, "d", n_params=10))):
        target = _Recording(table, "t", n_params=1000)
        r = Cascade(target, [drafter], CascadeConfig.make([[64]], dynamic=False)).generate(prompt, 30)
        assert r.tokens == plain.tokens and r.finish_reason == "eos", name
        decode = target.batches[1:]  # after the prompt's prefill
        assert all(0 not in b for b in decode), f"{name}: the target reviewed a drafted EOS: {decode}"
        # one review: the whole text but its EOS drafted, which the review's own token supplies
        assert r.metrics.target_steps == 1 and [len(b) for b in decode] == [len(plain.tokens)], name
