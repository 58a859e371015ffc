"""Overriding a configuration's fields by name, from JSON: the server's per-request `cascade` knobs and the
bench's method configs both go through `override`.

Nothing here names a field: the fields and their types are read from the dataclass, so a field added to
CascadeConfig can be overridden without touching a caller. Values are converted by their annotated type
(K accepts the same JSON as `--k`, with `k_spelling` beside it), a dataclass-valued field takes a JSON
object of the fields to change in it, and `dataclasses.replace` then runs the config's own validation.
Fields renamed since a client was written keep their old spelling (`LEGACY_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Literal, Mapping, Union

from ..protocol import CSDraftingError
from .config import LEGACY_FIELDS, KMatrix

# Not a field of CascadeConfig, but part of how K is written (KMatrix.parse); only valid together with k.
K_SPELLING = "k_spelling"


def field_names(config_type: type) -> list[str]:
    """The fields that may be overridden: every init field of the config dataclass."""
    return [f.name for f in dataclasses.fields(config_type) if f.init]


def override(base: Any, fields: Any, noun: str = "field", scope: str = "here") -> Any:
    """`base` (a dataclass) with `fields` (a JSON object) replaced; CSDraftingError says what to change.
    `noun` names a field in messages and `scope` where it is set ("drafting knob", "per request": the server)."""
    if not isinstance(fields, Mapping):
        raise CSDraftingError(f"the {noun}s must be a JSON object such as {{\"k\": [[4]]}}, not {type(fields).__name__}")
    names = field_names(type(base))
    spelled = {LEGACY_FIELDS.get(k, k): k for k in fields}  # field -> the name the caller used
    if len(spelled) < len(fields):
        old = sorted(k for k in fields if k in LEGACY_FIELDS)
        raise CSDraftingError(f"{noun}(s) {old} are old names of {[LEGACY_FIELDS[k] for k in old]}; give one spelling")
    unknown = sorted(set(spelled) - set(names) - {K_SPELLING})
    if unknown:
        raise CSDraftingError(f"unknown {noun}(s) {unknown}, not a {type(base).__name__} field: its fields are {names} "
                              f"(and {K_SPELLING!r} next to 'k')")
    spelling = fields.get(K_SPELLING, "cumulative")
    if K_SPELLING in fields and "k" not in fields:
        raise CSDraftingError(f"{K_SPELLING!r} only says how 'k' is written; give 'k' with it")
    hints = _hints(type(base))
    changes = {}
    for name, said in spelled.items():
        if name == K_SPELLING:
            continue
        value = _convert(said, fields[said], hints.get(name, Any), spelling, (noun, scope))
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = _replace(current, value, f"{noun} {said!r}")
        changes[name] = value
    return _replace(base, changes, f"bad {noun}")


def _hints(cls: type) -> dict[str, Any]:
    """Field types, resolved class by class: an annotation naming a class defined inside a function cannot be
    resolved, and its field is then passed on unconverted (the config's own validation judges it)."""
    out: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        try:
            out.update(typing.get_type_hints(c))
        except NameError:
            pass
    return out


def _replace(obj: Any, changes: Mapping[str, Any], what: str) -> Any:
    try:
        return dataclasses.replace(obj, **changes)
    except TypeError as exc:  # a field whose type we passed through unchecked
        raise CSDraftingError(f"{what}: {exc}") from None


def _convert(name: str, value: Any, hint: Any, spelling: str, words: tuple[str, str]) -> Any:
    noun, scope = words
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise CSDraftingError(f"{noun} {name!r} cannot be null")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(name, value, opt, spelling, words)
            except CSDraftingError as exc:
                errors.append(str(exc))
        raise CSDraftingError(errors[0] if len(errors) == 1 else f"{noun} {name!r}: {'; or '.join(errors)}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise CSDraftingError(f"{noun} {name!r} must be one of {list(allowed)} (got {value!r})")
        return value
    if hint is KMatrix:
        return KMatrix.parse(value, spelling)
    if hint is bool:
        if not isinstance(value, bool):
            raise CSDraftingError(f"{noun} {name!r} must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CSDraftingError(f"{noun} {name!r} must be an integer (got {value!r})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CSDraftingError(f"{noun} {name!r} must be a number (got {value!r})")
        if not -sys.float_info.max <= value <= sys.float_info.max:  # JSON integers have no bound; floats do
            raise CSDraftingError(f"{noun} {name!r} must be a finite number of float size")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise CSDraftingError(f"{noun} {name!r} must be a string (got {value!r})")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise CSDraftingError(f"{noun} {name!r} must be a list (got {value!r})")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if len(args) == 1 else Any
        return origin(_convert(f"{name}[{i}]", v, item, spelling, words) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise CSDraftingError(f"{noun} {name!r} must be a JSON object (got {value!r})")
        return value  # merged into the current value by `override`
    if hint is Any:
        return value  # no annotation to go by: the config's own validation judges it
    # e.g. a tuple of measured cost curves: nothing a request could spell in JSON
    raise CSDraftingError(
        f"{noun} {name!r} cannot be set {scope} (its values are {getattr(hint, '__name__', hint)}, not plain JSON); "
        "set it in the cascade config instead"
    )
