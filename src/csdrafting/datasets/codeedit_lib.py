"""Longer code edits: whole functions of two pinned, permissively licensed pure-Python libraries.

EditEval (``codeedit``) hands the model short snippets (median 208 characters); an assistant asked to
edit a library function rewrites a whole function and copies most of it. This set builds such tasks
deterministically from the sources inside two pinned wheels, fetched once from the package registry with
``csdrafting.store.ensure_wheel`` (nothing is installed, nothing vendored):

=========================  ===========  =====================================================  =====
package (pinned)           licence      functions taken                                        items
=========================  ===========  =====================================================  =====
``more-itertools==10.8.0``  MIT          top-level ``def``s of ``more_itertools/*.py``           131
``requests==2.32.3``       Apache-2.0   top-level ``def``s of ``requests/*.py``                  39
=========================  ===========  =====================================================  =====

A function is taken when it is a module-level ``def`` (not async, not nested, not a method) of 15 to 80
lines, decorators included; modules in name order, functions in file order. Its source is shown verbatim.

Instructions come from the fixed rotation :data:`ROTATION`, dealt in turn over the functions of both
packages in the order above: each function takes the next entry that applies to it (entries that do not
apply are skipped for that function only), and the next function goes on after the entry used. Over the
170 functions: 53 type_hints, 51 rename, 53 document, 12 error_message, 1 f_strings (these libraries
rarely format strings the old way):

==============  ==============================================================  ============================
kind            instruction                                                     applies when
==============  ==============================================================  ============================
type_hints      add type hints to every parameter and the return value          no annotation in the signature
rename          rename parameter ``old`` to ``new`` (also in the docstring)     a parameter is used in the body
document        add a docstring and comments (or, with a docstring, comments)   always
f_strings       convert %-formatting and str.format() calls to f-strings        a string constant is formatted
error_message   start every ``Exc`` message it raises with ``<name>: ``          it raises ``Exc("...")``
==============  ==============================================================  ============================

``rename`` picks the parameter (not self/cls, not ``*args``/``**kwargs``) named most often in the body,
the earliest on a tie; the new name comes from :data:`NEW_NAMES` (else ``<old>_value``), never a name the
function already uses. ``error_message`` names the first exception class raised with a message.

Prompt (one user turn, through ``chat_format``)::

    Here is a function from <package> <version> (<module path>):

    ```python
    <the function's source>
    ```

    <instruction>

    Return the complete rewritten function in one Python code block.

Ids ``<package>/<module path>:<function>``; ``category`` is the instruction's kind; no reference answer.
Split key ``sha256("codeedit-lib:<id>")``.
"""

from __future__ import annotations

import ast
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..protocol import CSDraftingError
from ..store import ensure_wheel
from ._core import Dataset, Item

NAME = "codeedit-lib"
MIN_LINES, MAX_LINES = 15, 80


@dataclass(frozen=True)
class Library:
    package: str
    version: str
    folder: str  # the package's folder inside the wheel
    licence: str


LIBRARIES = (
    Library("more-itertools", "10.8.0", "more_itertools", "MIT"),
    Library("requests", "2.32.3", "requests", "Apache-2.0"),
)
COUNT = 170
TEMPLATE = (
    "Here is a function from {package} {version} ({module}):\n\n```python\n{code}\n```\n\n{instruction}\n\n"
    "Return the complete rewritten function in one Python code block."
)
# new names for the parameters these libraries use most; others become <old>_value
NEW_NAMES = {
    "iterable": "items", "iterables": "sources", "n": "count", "pred": "predicate", "func": "function",
    "function": "func", "key": "key_func", "seq": "sequence", "size": "chunk_size", "url": "target_url",
    "value": "raw_value", "data": "payload", "headers": "header_map", "r": "length", "k": "limit",
    "default": "fallback", "start": "begin", "stop": "end", "step": "stride", "strict": "check_lengths",
}


@dataclass(frozen=True)
class Function:
    """A function as found in a module: enough to render its task."""

    library: Library
    module: str
    node: ast.FunctionDef
    source: str

    @property
    def id(self) -> str:
        return f"{self.library.package}/{self.module}:{self.node.name}"


# ------------------------------------------------------------------------------------------------ instructions


def _signature_args(node: ast.FunctionDef) -> list[ast.arg]:
    a = node.args
    return [*a.posonlyargs, *a.args, *a.kwonlyargs]


def _type_hints(node: ast.FunctionDef) -> str | None:
    a = node.args
    every = _signature_args(node) + [x for x in (a.vararg, a.kwarg) if x is not None]
    if node.returns is not None or any(x.annotation is not None for x in every):
        return None
    return "Add type hints to every parameter and to the return value (import from typing what you need)."


def _names_used(node: ast.FunctionDef) -> Counter:
    return Counter(n.id for n in ast.walk(node) if isinstance(n, ast.Name))


def _rename(node: ast.FunctionDef) -> str | None:
    used = _names_used(node)
    params = [x.arg for x in _signature_args(node) if x.arg not in ("self", "cls")]
    candidates = [p for p in params if used[p] > 0]
    if not candidates:
        return None
    old = max(candidates, key=lambda p: (used[p], -params.index(p)))
    taken = set(used) | set(params) | {node.name}
    new = NEW_NAMES.get(old, f"{old}_value")
    if new in taken:
        new = f"{old}_value"
    while new in taken:
        new += "_"
    return f"Rename the parameter `{old}` to `{new}` everywhere in the function, including its docstring."


def _document(node: ast.FunctionDef) -> str:
    if ast.get_docstring(node):
        return "Add short comments explaining the non-obvious steps; keep the docstring as it is."
    return ("Add a docstring that describes the parameters and the return value, and short comments explaining "
            "the non-obvious steps.")


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _f_strings(node: ast.FunctionDef) -> str | None:
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) and _is_str(n.left):
            break
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "format" and _is_str(n.func.value):
            break
    else:
        return None
    return "Convert every %-formatting and str.format() call in the function to an f-string."


def _error_message(node: ast.FunctionDef) -> str | None:
    for n in ast.walk(node):
        if (isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and isinstance(n.exc.func, ast.Name)
                and n.exc.args and isinstance(n.exc.args[0], (ast.Constant, ast.JoinedStr))):
            return (f"Start the message of every `{n.exc.func.id}` that this function raises with "
                    f"`{node.name}: ` so that callers can tell where it came from.")
    return None


# (kind, instruction or None when it does not apply)
ROTATION: tuple[tuple[str, Callable[[ast.FunctionDef], str | None]], ...] = (
    ("type_hints", _type_hints),
    ("rename", _rename),
    ("document", _document),
    ("f_strings", _f_strings),
    ("error_message", _error_message),
)


def deal(nodes: list[ast.FunctionDef]) -> list[tuple[str, str]]:
    """(kind, instruction) per function: the rotation dealt in turn, skipping entries that do not apply."""
    out, at = [], 0
    for node in nodes:
        for j in range(len(ROTATION)):
            kind, make = ROTATION[(at + j) % len(ROTATION)]
            text = make(node)
            if text:
                out.append((kind, text))
                at = (at + j + 1) % len(ROTATION)
                break
        else:
            raise AssertionError("'document' always applies")
    return out


# ------------------------------------------------------------------------------------------------ reading


def functions(lib: Library) -> list[Function]:
    """The library's module-level functions of MIN_LINES..MAX_LINES lines, modules in name order."""
    wheel = ensure_wheel(lib.package, lib.version)
    out = []
    with zipfile.ZipFile(wheel) as z:
        modules = sorted(n for n in z.namelist() if n.startswith(lib.folder + "/") and n.endswith(".py"))
        if not modules:
            raise CSDraftingError(f"{wheel.name} has no {lib.folder}/*.py")
        for module in modules:
            text = z.read(module).decode("utf-8")
            lines = text.splitlines()
            for node in ast.parse(text, module).body:
                if not isinstance(node, ast.FunctionDef):
                    continue
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if MIN_LINES <= node.end_lineno - start + 1 <= MAX_LINES:
                    source = "\n".join(lines[start - 1 : node.end_lineno]).rstrip()
                    out.append(Function(lib, module, node, source))
    return out


def render(f: Function, text: str) -> str:
    """The user turn for one function and its instruction (see the module docstring)."""
    return TEMPLATE.format(package=f.library.package, version=f.library.version, module=f.module, code=f.source,
                           instruction=text)


def _items() -> list[Item]:
    found = [f for lib in LIBRARIES for f in functions(lib)]
    return [Item(f.id, (render(f, text),), kind, NAME) for f, (kind, text) in zip(found, deal([f.node for f in found]))]


ORIGIN = ", ".join(f"{lib.package}=={lib.version} ({lib.licence})" for lib in LIBRARIES) + ": module-level functions"
CODEEDIT_LIB_SETS = (Dataset(NAME, ORIGIN, COUNT, True, _items, lambda _id: NAME),)
