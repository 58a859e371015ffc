"""Errors and warnings of the model store."""

from __future__ import annotations

from ..protocol import CSDraftingError


class StoreError(CSDraftingError):
    """The store could not produce a verified file; the message says why and what to do."""


class ModelStoreWarning(UserWarning):
    """A cached file was found damaged (wrong size or hash) and is being rebuilt."""
