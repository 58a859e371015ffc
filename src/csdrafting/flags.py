"""The command-line flags every front end shares, and the cascade spec they describe.

`generate`, `demo`, `serve`, `prepare` and `bench` take a cascade the same way (`--config`, `--target`,
`--drafter`, `--k`, ...), and `tune` and `calibrate` place models the same way (`--backend`, `--threads`,
`--device`, ...). The flags and their reading live here, not in a command's module, so that no command
line imports another. Drafter settings get their flags from the drafter registry (`--suffix-persist`,
`--maxgram-bigram`, ...): a drafter registered before the parser is built has its flags too. Kept out of
spec.py so that the library (a spec, `build`) does not carry argparse.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from .cascade.config import KMatrix, default_k
from .drafters import registry
from .protocol import CSDraftingError
from .spec import DEFAULT_SPEC, CascadeSpec

PLACEMENT = ("backend", "threads", "n_ctx", "device", "dtype", "n_gpu_layers")


def add_placement_args(g, defaults: dict[str, Any] | None = None, only: tuple[str, ...] = PLACEMENT) -> None:
    """--backend, --threads, --n-ctx, --device, --dtype, --n-gpu-layers (those in `only`). Without
    `defaults` each defaults to None, meaning "as the config says"."""
    d = defaults or {}
    helps = {
        "backend": dict(choices=["llamacpp", "hf"], help="model backend (default llamacpp)"),
        "threads": dict(type=int, help="CPU threads per model (default 2)"),
        "n_ctx": dict(type=int, help="context length per model (default 4096)"),
        "device": dict(help="--backend hf: cpu (default), cuda, cuda:N, mps, or auto (accelerate's device map)"),
        "dtype": dict(help="--backend hf: float32 (default), bfloat16 or float16"),
        "n_gpu_layers": dict(type=int, help="llama.cpp backend: layers offloaded to the GPU (default 0; -1 = all)"),
    }
    for name in only:
        g.add_argument("--" + name.replace("_", "-"), default=d.get(name), **helps[name])


def _setting_dest(drafter: str, name: str) -> str:
    return f"drafter_setting:{drafter}:{name}"


def add_drafter_setting_args(p: argparse.ArgumentParser) -> None:
    """One flag per setting of every registered statistical drafter, e.g. --suffix-persist/--no-suffix-persist."""
    for entry in registry.entries():
        g = p.add_argument_group(f"{entry.name} drafter ({entry.description.split(':')[0]})")
        for s in entry.settings:
            dest = _setting_dest(entry.name, s.name)
            default = ("default " + ("on" if s.default else "off") if isinstance(s.default, bool)
                       else f"default {s.default!r}" if isinstance(s.default, str) else f"default {s.default}")
            # SUPPRESS: a flag not given leaves no attribute, so `none` given is told from nothing given
            if s.type is bool:
                g.add_argument(s.flag(entry.name), dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{s.help} ({default})")
            else:
                metavar = "|".join([*s.keywords, "FILE", *(["none"] if s.optional else [])]) if s.keywords else None
                g.add_argument(s.flag(entry.name), dest=dest, default=argparse.SUPPRESS,
                               metavar=metavar or s.type.__name__.upper(), type=_setting_type(s), help=f"{s.help} ({default})")


def _setting_type(s: registry.Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if s.optional and text.lower() == "none":
            return None
        try:
            return s.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {s.type.__name__}, got {text!r}") from None

    return parse


def add_cascade_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cascade (defaults: the built-in Qwen2.5-Coder cascade, see `csdrafting demo`)")
    g.add_argument("--config", help="cascade config JSON (as written by `csdrafting tune`)")
    g.add_argument("--target", help="target model: NAME:TIER from the store, a .gguf file or a transformers directory")
    g.add_argument("--drafter", action="append", default=None,
                   help="drafter, largest first; repeat for a cascade; a registered statistical drafter for the "
                        f"bottom level (last only): {', '.join(registry.names())}")
    g.add_argument("--plain", action="store_true", help="no drafters: plain autoregressive decoding of the target")
    g.add_argument("--k", help="K matrix as JSON, e.g. '[[4,12],[0,8]]'")
    g.add_argument("--k-spelling", choices=["cumulative", "increments"],
                   help="how --k is written (default cumulative, the paper's); only with --k")
    g.add_argument("--lenience", type=float, help="lenience at intermediate reviewers (>= 1; the target always uses 1)")
    g.add_argument("--bottom-length", "--maxgram-length", dest="bottom_length", type=int,
                   help="tokens the bottom statistical drafter proposes per call (default: what its quota asks)")
    g.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=None,
                   help="cost-aware drafting: K is a cap, each level drafts only what its confidence pays for "
                        "(default: on in the built-in cascade)")
    g.add_argument("--route", action=argparse.BooleanOptionalAction, default=None,
                   help="with --dynamic: route each step around a neural drafter whenever the levels below it are "
                        "predicted to draft faster on their own (default off: the paper's fixed paths)")
    add_placement_args(g)
    g.add_argument("--model-device", action="append", metavar="REF=DEVICE",
                   help="--backend hf: put one model of the cascade on its own device (repeatable)")
    add_drafter_setting_args(p)


def spec_from_args(args: argparse.Namespace) -> CascadeSpec:
    """The cascade spec: --config or the default, overridden by the explicit flags; validated."""
    if args.k_spelling and args.k is None:
        raise CSDraftingError("--k-spelling says how --k is written; give --k with it (a K from --config or the "
                              "default is read in the spelling its file states)")
    spec = CascadeSpec.load(args.config) if args.config else DEFAULT_SPEC.copy()
    if args.target:
        spec.target = args.target
    if args.plain:
        spec.drafters, spec.k = [], None
    elif args.drafter is not None:
        spec.drafters = args.drafter
        if args.k is None:
            spec.k = default_k(len(spec.drafters))
    if args.k is not None:
        try:
            spec.k = KMatrix.parse(args.k, args.k_spelling or "cumulative")
        except CSDraftingError as exc:
            raise CSDraftingError(f"--k: {exc}") from None
    for attr in ("lenience", "bottom_length", "dynamic", "route", *PLACEMENT):
        v = getattr(args, attr, None)
        if v is not None:
            setattr(spec, attr, v)
    for entry in registry.entries():
        for s in entry.settings:
            dest = _setting_dest(entry.name, s.name)
            if dest in vars(args):
                spec.drafter_settings = {**spec.drafter_settings,
                                         entry.name: {**spec.settings_of(entry.name), s.name: getattr(args, dest)}}
    for item in getattr(args, "model_device", None) or []:
        ref, sep, dev = item.rpartition("=")
        if not sep or not ref or not dev:
            raise CSDraftingError(f"--model-device wants REF=DEVICE, e.g. qwen2.5-coder-0.5b:Q4_K_M=cuda:1 (got {item!r})")
        spec.devices = {**spec.devices, ref: dev}
    spec.validate()
    return spec
