"""Code editing: EditEval, the test set of InstructCoder (Li, Hu et al., ACL 2024 SRW), shipped in the package.

File ``data/edit_eval/edit_eval.jsonl.gz``: ``edit_eval/edit_eval.jsonl`` of GitHub
``qishenghu/InstructCoder`` at commit ``1e7befb`` (2024-10-04), unmodified (MIT; licence and notice beside it).
194 hand-written Python tasks (ids ``EditEval/0`` .. ``EditEval/194``; 79 is absent upstream), each a piece
of code, an instruction to change it, the edited code and a test.

Why this set: it is a public code-editing benchmark whose items are what users of coding assistants ask
for (given code and an instruction; the answer rewrites the code and mostly copies it: the median difflib
similarity ratio of the reference answer to the given code is 0.73), it is Python, its licence allows
shipping it, and its pinned commit is reachable here. Looked at and not used: CanItEdit (nuprl; the 105
tasks are published only on a model hub this machine cannot reach, the GitHub repository holds the harness),
CodeEditorBench (likewise: the repository holds the harness, the problems are on the hub), aider's
benchmarks (Exercism exercises are write-from-a-stub tasks, not edits). EditEval's inputs are short (median
208 characters; many are HumanEval solutions given a new requirement), so each answer has less to copy
than an edit of a long file.

Prompt (one user turn, through ``chat_format``, required)::

    Here is some Python code:

    ```python
    <the task's code>
    ```

    <the task's instruction>

    Rewrite the code with this change and return the complete code in one Python code block.

The code is the task's ``input`` verbatim (trailing newlines dropped), the instruction its ``instruction``
stripped of surrounding spaces. ``reference`` is the task's edited code (``output``). The task's
``context`` (a class around the code, used upstream only to run the test) is not shown, as in EditEval's
own prompts. Split key ``sha256("codeedit:<id>")``; file order.
"""

from __future__ import annotations

from ..protocol import CSDraftingError
from ._core import Dataset, Item, json_lines, read_shipped

FILE = "edit_eval/edit_eval.jsonl.gz"
ORIGIN = "EditEval edit_eval.jsonl (GitHub qishenghu/InstructCoder @ 1e7befb, MIT), shipped in csdrafting/data"
NAME = "codeedit"
TEMPLATE = (
    "Here is some Python code:\n\n```python\n{code}\n```\n\n{instruction}\n\n"
    "Rewrite the code with this change and return the complete code in one Python code block."
)


def render(code: str, instruction: str) -> str:
    """The user turn for one task (see the module docstring)."""
    return TEMPLATE.format(code=code.rstrip("\n"), instruction=instruction.strip())


def read_tasks() -> list[dict]:
    """The raw EditEval records, in file order."""
    return json_lines(read_shipped(FILE), FILE)


def _items() -> list[Item]:
    out = []
    for rec in read_tasks():
        tid, code, instruction = rec.get("task_id"), rec.get("input"), rec.get("instruction")
        if not all(isinstance(v, str) and v.strip() for v in (tid, code, instruction)):
            raise CSDraftingError(f"{FILE}: task {tid or '?'} lacks its task_id, input or instruction")
        out.append(Item(tid, (render(code, instruction),), "", NAME, rec.get("output", "")))
    return out


CODEEDIT_SETS = (Dataset(NAME, ORIGIN, 194, True, _items, lambda _id: NAME),)
