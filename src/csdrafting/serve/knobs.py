"""Per-request overrides of a cascade's drafting knobs, built from CascadeConfig's own fields.

Nothing here names a knob: the fields and their types are read from the dataclass, so a field added to
CascadeConfig can be overridden per request without touching the server. Values are converted by their
annotated type (K accepts the same JSON as `--k`), then `dataclasses.replace` runs the config's own
validation.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, Union

from ..cascade.config import CascadeConfig, KMatrix
from ..protocol import CSDraftingError

# Not a field of CascadeConfig, but part of how K is written (KMatrix.parse); only valid together with k.
K_SPELLING = "k_spelling"


def knob_names(config_type: type = CascadeConfig) -> list[str]:
    """The knobs a request may override: every init field of the config dataclass."""
    return [f.name for f in dataclasses.fields(config_type) if f.init]


def override(base: CascadeConfig, knobs: Any) -> CascadeConfig:
    """`base` with the knobs of `knobs` (a JSON object) replaced; CSDraftingError says what to change."""
    if not isinstance(knobs, Mapping):
        raise CSDraftingError(f"the drafting knobs must be a JSON object such as {{\"k\": [[4]]}}, not {type(knobs).__name__}")
    names = knob_names(type(base))
    unknown = sorted(set(knobs) - set(names) - {K_SPELLING})
    if unknown:
        raise CSDraftingError(
            f"unknown drafting knob(s) {unknown}: this cascade's knobs are {names} (and {K_SPELLING!r} next to 'k')"
        )
    spelling = knobs.get(K_SPELLING, "cumulative")
    if K_SPELLING in knobs and "k" not in knobs:
        raise CSDraftingError(f"{K_SPELLING!r} only says how 'k' is written; give 'k' with it")
    hints = typing.get_type_hints(type(base))
    changes = {name: _convert(name, value, hints.get(name, Any), spelling) for name, value in knobs.items() if name != K_SPELLING}
    try:
        return dataclasses.replace(base, **changes)
    except TypeError as exc:  # a knob whose type we passed through unchecked
        raise CSDraftingError(f"bad drafting knob: {exc}") from None


def _convert(name: str, value: Any, hint: Any, spelling: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise CSDraftingError(f"drafting knob {name!r} cannot be null")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(name, value, opt, spelling)
            except CSDraftingError as exc:
                errors.append(str(exc))
        raise CSDraftingError(errors[0] if len(errors) == 1 else f"drafting knob {name!r}: {'; or '.join(errors)}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise CSDraftingError(f"drafting knob {name!r} must be one of {list(allowed)} (got {value!r})")
        return value
    if hint is KMatrix:
        return KMatrix.parse(value, spelling)
    if hint is bool:
        if not isinstance(value, bool):
            raise CSDraftingError(f"drafting knob {name!r} must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CSDraftingError(f"drafting knob {name!r} must be an integer (got {value!r})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CSDraftingError(f"drafting knob {name!r} must be a number (got {value!r})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise CSDraftingError(f"drafting knob {name!r} must be a string (got {value!r})")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise CSDraftingError(f"drafting knob {name!r} must be a list (got {value!r})")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if len(args) == 1 else Any
        return origin(_convert(f"{name}[{i}]", v, item, spelling) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise CSDraftingError(f"drafting knob {name!r} must be a JSON object (got {value!r})")
        try:
            return hint(**value)
        except TypeError as exc:
            raise CSDraftingError(f"drafting knob {name!r}: {exc}") from None
    if hint is Any:
        return value  # no annotation to go by: the config's own validation judges it
    # e.g. a tuple of measured cost curves: nothing a request could spell in JSON
    raise CSDraftingError(
        f"drafting knob {name!r} cannot be set per request (its values are {getattr(hint, '__name__', hint)}, not "
        "plain JSON); set it in the cascade config the server was started with"
    )
