"""Per-request overrides of a cascade's drafting knobs: a request's `cascade` object applied to the server's
CascadeConfig by cascade/overrides.py, which reads the knobs from the config's own fields (a field added to
CascadeConfig can be overridden per request without touching the server; `maxgram_length` is still read,
as `bottom_length`).
"""

from __future__ import annotations

from typing import Any

from ..cascade.config import CascadeConfig
from ..cascade.overrides import override as _override


def override(base: CascadeConfig, knobs: Any) -> CascadeConfig:
    """`base` with the knobs of `knobs` (a JSON object) replaced; CSDraftingError says what to change."""
    return _override(base, knobs, "drafting knob", "per request")
