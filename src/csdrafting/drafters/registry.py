"""The drafter registry: every statistical (model-free) drafter by name, with its settings and its factory.

Like llama.cpp's name -> kind -> implementation table, this is the one place a drafter is listed. A cascade
config names drafters and stores their settings per drafter (`"drafter_settings": {"suffix": {"persist":
true}}`); the command line generates `--<drafter>-<setting>` flags from the settings; `spec.build`, the
bench, `tune`, `calibrate` and the server build drafters through `build`. None of them lists a drafter by
name, and the engine knows drafters only through `StatisticalDrafter`.

A new drafting source is one module with a `StatisticalDrafter` subclass and one `DrafterEntry`: in
`BUILTIN` below, or `register(entry)` from your own code before the cascade is built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..protocol import CSDraftingError
from .base import StatisticalDrafter
from .suffix import MAX_CONFIDENCE

DEFAULT = "default"  # the keyword a table or calibration setting uses for the packaged file


@dataclass(frozen=True)
class Setting:
    """One setting of a drafter: its name in a config file (the flag is `--<drafter>-<name>`), type,
    default and help. `optional`: null (`none` on the command line) is a value; `path`: a relative path
    in a config file is read from the config file's folder; `keywords`: strings that are not paths;
    `legacy`: the top-level config key it had before settings were kept per drafter."""

    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str
    optional: bool = False
    minimum: float | None = None
    path: bool = False
    keywords: tuple[str, ...] = ()
    legacy: str | None = None

    def check(self, drafter: str, value: Any) -> Any:
        """`value` validated (and an int widened to float where a float is asked); CSDraftingError if bad."""
        what = f"{drafter} setting {self.name!r}"
        if value is None:
            if self.optional:
                return None
            raise CSDraftingError(f"{what} cannot be null")
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, self.type)
        if not ok:
            raise CSDraftingError(f"{what} must be a {self.type.__name__}{' or null' if self.optional else ''} (got {value!r})")
        if self.minimum is not None and value < self.minimum:
            raise CSDraftingError(f"{what} must be >= {self.minimum:g} (got {value!r})")
        return value

    def flag(self, drafter: str) -> str:
        return f"--{drafter}-{self.name}".replace("_", "-")

    def relative_to(self, value: Any, folder: Path) -> Any:
        """A path setting's relative path as seen from `folder` (where the config file lies)."""
        if not self.path or not isinstance(value, str) or value in self.keywords or Path(value).is_absolute():
            return value
        return str(folder / value)


@dataclass(frozen=True)
class DrafterEntry:
    """A drafter's name, what it does, its settings, and `factory(settings, vocab_size)` -> the drafter
    (settings complete and validated; vocab_size is the target's, for tables that must fit it)."""

    name: str
    description: str
    factory: Callable[[dict[str, Any], int | None], StatisticalDrafter]
    settings: tuple[Setting, ...] = ()

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.settings) or "none"
        raise CSDraftingError(f"the {self.name} drafter has no setting {name!r} (its settings: {known})")

    def check(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The given settings validated, those equal to their default dropped (so equal configs compare equal)."""
        if given is not None and not isinstance(given, Mapping):
            raise CSDraftingError(f"the {self.name} drafter's settings must be a JSON object, not {given!r}")
        out = {}
        for name, value in (given or {}).items():
            s = self.setting(name)
            value = s.check(self.name, value)
            if value != s.default:
                out[name] = value
        return out

    def resolve(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every setting: the given ones validated, defaults for the rest."""
        return {**{s.name: s.default for s in self.settings}, **self.check(given)}

    def build(self, given: Mapping[str, Any] | None, vocab_size: int | None) -> StatisticalDrafter:
        drafter = self.factory(self.resolve(given), vocab_size)
        if not isinstance(drafter, StatisticalDrafter):
            raise CSDraftingError(f"the {self.name} drafter's factory returned {type(drafter).__name__}, not a StatisticalDrafter")
        return drafter


_REGISTRY: dict[str, DrafterEntry] = {}


def register(entry: DrafterEntry) -> None:
    """Make `entry` available to configs, flags, the bench, tune and the server under its name."""
    if not entry.name or not entry.name.replace("-", "").replace("_", "").isalnum():
        raise CSDraftingError(f"a drafter name is letters, digits, '-' and '_' (got {entry.name!r})")
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise CSDraftingError(f"a drafter named {entry.name!r} is registered already")
    _REGISTRY[entry.name] = entry


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(_REGISTRY)


def entries() -> list[DrafterEntry]:
    return list(_REGISTRY.values())


def is_statistical(ref: str) -> bool:
    """Whether a cascade's drafter reference names a registered statistical drafter (else it is a model)."""
    return ref in _REGISTRY


def get(name: str) -> DrafterEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CSDraftingError(f"no statistical drafter named {name!r}; registered: {', '.join(_REGISTRY)}") from None


def build(name: str, settings: Mapping[str, Any] | None = None, vocab_size: int | None = None) -> StatisticalDrafter:
    """The drafter `name`, configured by `settings` (missing ones at their defaults)."""
    return get(name).build(settings, vocab_size)


def legacy_keys() -> dict[str, list[tuple[str, str]]]:
    """Old top-level config key -> the (drafter, setting) pairs it configured."""
    out: dict[str, list[tuple[str, str]]] = {}
    for e in _REGISTRY.values():
        for s in e.settings:
            if s.legacy:
                out.setdefault(s.legacy, []).append((e.name, s.name))
    return out


# ------------------------------------------------------------------------------------------------ built-ins


@functools.lru_cache(maxsize=4)
def _load_table(path: str):
    """Bigram tables are read-only: one copy per file, however many drafters use it."""
    from .bigram import BigramTable

    return BigramTable.load(path)


def bigram_table(value: str | None, vocab_size: int | None):
    """The table a `bigram` setting names: "default" is the packaged Qwen table where the vocabulary fits."""
    if value is None:
        return None
    if value == DEFAULT:
        from .bigram_corpus import default_bigram_path

        table = _load_table(str(default_bigram_path()))
        return table if table.vocab_size == vocab_size else None
    return _load_table(value)


def _maxgram(s: dict[str, Any], vocab_size: int | None) -> StatisticalDrafter:
    from .maxgram import MaxGram

    return MaxGram(bigram_table(s["bigram"], vocab_size))


def _suffix(s: dict[str, Any], vocab_size: int | None) -> StatisticalDrafter:
    from .suffix import Calibration, SuffixDrafter, default_calibration

    cal = s["calibration"]
    cal = default_calibration() if cal == DEFAULT else Calibration.load(cal) if cal else None
    return SuffixDrafter(cal, bigram_table(s["bigram"], vocab_size), s["max_ngram"], s["min_count"], s["persist"],
                         long_match=s["long_match"], adapt_weight=s["adapt_weight"], max_confidence=s["max_confidence"],
                         learn_up=s["learn_up"], longest_copy=s["longest_copy"])


def _bigram_setting(fallback_for: str) -> Setting:
    return Setting("bigram", str, DEFAULT, f"{fallback_for}: 'default' (the packaged Qwen2.5 table, used when the "
                   "target's vocabulary fits), a .npz path from `csdrafting bigram`, or none", optional=True,
                   keywords=(DEFAULT,), legacy="bigram")


BUILTIN = (
    DrafterEntry(
        "suffix",
        "confident suffix matches: continuations of the longest earlier context in the prompt and the text so far, "
        "with occurrence counts and a calibrated confidence (drafters/suffix.py)",
        _suffix,
        (
            Setting("calibration", str, DEFAULT, "measured acceptance per feature bucket: 'default' (packaged, "
                    "measured with the default target), a path from `csdrafting calibrate`, or none (no "
                    "confidences: cost-aware drafting cannot trim its proposals)", optional=True, path=True,
                    keywords=(DEFAULT,), legacy="suffix_calibration"),
            Setting("max_ngram", int, 12, "longest context matched", minimum=1, legacy="suffix_max_ngram"),
            Setting("min_count", int, 1, "a continuation must have followed its context at least this often",
                    minimum=1, legacy="suffix_min_count"),
            Setting("long_match", int, 64, "how far past max_ngram a match is measured (a long copy's length "
                    "class decides its confidence)", minimum=1),
            Setting("adapt_weight", float, 8.0, "pseudo-observations behind the calibration when a request's own "
                    "outcomes lower its confidence (0: no in-request learning)", minimum=0),
            Setting("learn_up", bool, False, "let a request's own surplus raise a confidence above its calibrated "
                    "rate too (replayed to lose, measured a tie: README, 'Learning within a request')"),
            Setting("longest_copy", bool, True, "where the longest context occurred in several places, continue "
                    "the one whose match reaches furthest back (the copy the text is making); off: its most "
                    "frequent continuation"),
            Setting("max_confidence", float, MAX_CONFIDENCE, "no proposal is trusted beyond this "
                    "acceptance, calibrated or adapted (a copy ends where an edit begins)", minimum=0),
            Setting("persist", bool, False, "keep the outputs of earlier generations of this process as a second "
                    "source of matches (with it, a seeded sample also depends on the earlier generations, since "
                    "drafts decide how the random stream is consumed)", legacy="suffix_persist"),
            _bigram_setting("fallback when no context matches"),
        ),
    ),
    DrafterEntry(
        "maxgram",
        "the paper's Max-Gram: the continuation of the longest earlier match, else a bigram guess (drafters/maxgram.py)",
        _maxgram,
        (_bigram_setting("guess when no earlier match exists"),),
    ),
)

for _entry in BUILTIN:
    register(_entry)
