"""Running a benchmark: units of work, a JSONL record store that survives being killed, and the loop.

A unit is one (phase, dataset, prompt, method variant); a conversation (a prompt with several user
turns) is one unit whose turns run in order (turns.py). Phase "calibration" runs every point of a
method's draft-length grid on calibration-split prompts; phase "eval" runs each method once, with the
length that calibration chose for that dataset (best aggregate tokens/s by the run's headline timing),
on eval-split prompts.

Repetitions (`--repeats N`): every eval unit runs N times, round after round of all methods on the same
prompt, so that a slow spell of a shared machine falls on every method alike; each repetition is its own
record (`repeat` 0..N-1, key suffixed `#r`), and `collapse_repeats` makes one record per unit of them, with
the median timings, before anything is summarized. Raising N on a finished run adds the missing repetitions.

Order: methods compared with each other run one after the other on the same prompt, and the one that runs
second meets the machine as the first left it (caches, clock speed, the memory a peer's process just gave
back). In a Spec-Bench run that always put plain decoding first (docs/bench/q4-spec5), on the 15 prompts
where the default cascade made exactly plain's target passes, its passes took a median 0.9% longer
(scripts/where-time-goes.py), which a check with the order alternating in one process did not reproduce
(scripts/alternate-plain-csd.py). So by
default every other eval prompt (and round) runs its methods in the swapped order: per family, the methods
that can run before their baseline first (in reverse), then the baseline, then those that need its output
(the oracle). A method that ran before its baseline is checked against it once the baseline has run, and
both records are stored then; each record says whether it ran before its baseline (`ran_before_baseline`),
and the summary splits each method's ratio by it (headline.order_lines). The first run made this way
(docs/bench/q4-spec6) found no effect of the order (0.99x first, 1.00x second over 60 prompts); a fixed
order would still put any such effect on one side of every ratio. `--method-order fixed` keeps the list
order everywhere.

Resume: every finished unit is appended to records.jsonl as one line, flushed and fsynced before the
next unit starts. A run that is killed loses at most the unit in flight (and the units of its prompt that ran
before their baseline, which wait for it to be stored); a line cut short by the kill is
dropped (and the file rewritten without it) when the store is opened again, so each unit ends up with
exactly one record. Units already recorded are skipped; a conversation killed between its turns is
run again from its first turn.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from ..exactness import IDENTICAL, MISMATCH, TIE, first_difference
from ..files import atomic_write
from ..protocol import CSDraftingError
from .methods import HF, ORACLE, Method
from .turns import DIVERGENT, DECODE, Render, Turn, classify, judge, record_fields, run_turns, turns_of

__all__ = ["CALIBRATION", "DIVERGENT", "EVAL", "Executor", "ExecutorPool", "PromptIds", "RecordStore", "Unit",
           "choose_lengths", "classify", "collapse_repeats", "execute", "plan"]

CALIBRATION, EVAL = "calibration", "eval"


@dataclass(frozen=True)
class Unit:
    phase: str
    dataset: str
    prompt_id: str
    method: str
    length: int | None = None  # the grid point of a calibration unit; None: the chosen (or default) length
    rep: int = 0  # which repetition of an eval unit (0: the first, keyed as before repetitions existed)

    @property
    def variant(self) -> str:
        return self.method if self.length is None else f"{self.method}@k={self.length}"

    @property
    def key(self) -> str:
        return f"{self.phase}|{self.dataset}|{self.prompt_id}|{self.variant}" + (f"#r{self.rep}" if self.rep else "")

    def baseline_key(self, baseline: str) -> str:
        return f"{self.phase}|{self.dataset}|{self.prompt_id}|{baseline}"


@dataclass(frozen=True)
class PromptIds:
    phase: str
    dataset: str
    id: str
    ids: tuple[int, ...]  # the first turn's
    category: str = ""
    group: str = ""  # the reporting group (a Spec-Bench group; else the dataset's own name)
    turns: tuple[str, ...] = ()  # the user turns run as a conversation (empty or one: a single generation)


# ------------------------------------------------------------------------------------------------ records


class RecordStore:
    """records.jsonl: one JSON object per line, keyed by `key`; appends are durable one by one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self.repaired = 0  # lines dropped when opening (cut short by a kill, or duplicated)
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        keep: list[bytes] = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["key"]
            except (ValueError, KeyError, TypeError):
                self.repaired += 1
                continue
            if key in self.records:
                self.repaired += 1
                continue
            self.records[key] = rec
            keep.append(line)
        if self.repaired or (raw and not raw.endswith(b"\n")):
            atomic_write(self.path, b"".join(line + b"\n" for line in keep), fsync=True)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, rec: dict) -> None:
        key = rec["key"]
        if key in self.records:
            raise CSDraftingError(f"record {key} already exists")
        line = json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = rec

    def values(self) -> list[dict]:
        return list(self.records.values())


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Refuse to run two benchmarks into the same directory at once."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CSDraftingError(f"another `csdrafting bench` is writing to {out_dir}; wait for it or use --out") from None
        yield


# ------------------------------------------------------------------------------------------------ planning


def needs_baseline_output(m: Method) -> bool:
    """Whether a method's run takes its baseline's output as input (the oracle drafts it), so that it can only
    run after its baseline on the same prompt."""
    return ORACLE in m.drafters


def swapped(methods: Sequence[Method]) -> list[Method]:
    """The methods in the other order (module docstring, "Order"): per family, the methods that can run before
    their baseline in reverse list order, then the baseline, then those that need its output."""
    out: list[Method] = []
    for fam in dict.fromkeys(m.family for m in methods):
        own = [m for m in methods if m.family == fam]
        free = [m for m in own if not m.is_baseline and not needs_baseline_output(m)]
        out += free[::-1] + [m for m in own if m.is_baseline] + [m for m in own if needs_baseline_output(m)]
    return out


def plan(methods: Sequence[Method], prompts: Sequence[PromptIds], hf_limit: int | None = None,
         repeats: int = 1, alternate: bool = True) -> list[Unit]:
    """All units, in execution order: calibration before eval, prompt by prompt, methods in list order.

    Calibration runs each family's baseline too (the oracle needs plain's output as its reference, and
    every grid point is checked for exactness against it). `hf_limit` caps the transformers peers to the
    first N eval prompts of each dataset (they are slow on CPU). `repeats`: each eval prompt's methods run
    that many rounds in a row (module docstring). `alternate`: every other eval prompt (and round) runs its
    methods in the `swapped` order (module docstring, "Order"); False: always in list order.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise CSDraftingError(f"repeats must be a positive integer (got {repeats!r})")
    tunable = [m for m in methods if m.tunable]
    need_base = {m.baseline for m in tunable}
    units: list[Unit] = []
    for p in prompts:
        if p.phase != CALIBRATION:
            continue
        for m in methods:
            if m.name in need_base:
                units.append(Unit(CALIBRATION, p.dataset, p.id, m.name))
        for m in tunable:
            units.extend(Unit(CALIBRATION, p.dataset, p.id, m.name, k) for k in m.grid)
    seen: dict[str, int] = {}
    for p in prompts:
        if p.phase != EVAL:
            continue
        i = seen[p.dataset] = seen.get(p.dataset, -1) + 1
        for rep in range(repeats):
            for m in swapped(methods) if alternate and (i + rep) % 2 else methods:
                if m.family == HF and hf_limit is not None and i >= hf_limit:
                    continue
                units.append(Unit(EVAL, p.dataset, p.id, m.name, rep=rep))
    return units


# timings a repetition changes, and the rates they give (tokens/s); everything else is the first run's
_SECONDS = ("seconds", "e2e_seconds", "prefill_seconds", "decode_seconds")
_RATES = ("tokens_per_second", "e2e_tokens_per_second", "decode_tokens_per_second")
_SEVERITY = {None: 0, IDENTICAL: 0, TIE: 1, DIVERGENT: 2, MISMATCH: 3}


def _unit_of(rec: dict) -> object:
    """The unit a record ran: its key without a repetition's suffix (a record without a key is its own)."""
    key, rep = rec.get("key"), rec.get("repeat", 0)
    if key is None:
        return id(rec)
    return key[: -len(f"#r{rep}")] if rep and key.endswith(f"#r{rep}") else key


def collapse_repeats(records: Iterable[dict]) -> list[dict]:
    """One record per unit: the repetitions of a unit (`repeat` > 0, see the module docstring) fold into its
    first, whose timings and rates become the medians over all of them (`repeats` keeps each run's decode
    and end-to-end seconds). Their outputs should agree (the same greedy computation); where one differs,
    the collapsed record carries the output and exactness verdict of the worst repetition, so a mismatch
    in any run is reported. Records of units run once pass through unchanged, in their order."""
    groups: dict[object, list[dict]] = {}
    for r in records:
        groups.setdefault(_unit_of(r), []).append(r)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        runs = sorted(runs, key=lambda r: r.get("repeat", 0))
        rec = dict(runs[0])
        for f in _SECONDS + _RATES:
            if all(f in r for r in runs):
                rec[f] = statistics.median(r[f] for r in runs)
        worst = max(runs, key=lambda r: _SEVERITY.get(r.get("exactness"), 0))
        if worst is not runs[0]:
            for f in ("tokens", "new_tokens", "finish_reason", "exactness", "matches_baseline", "divergence"):
                if f in worst:
                    rec[f] = worst[f]
        rec["repeats"] = {"n": len(runs), "decode_seconds": [r.get("decode_seconds") for r in runs],
                          "e2e_seconds": [r.get("e2e_seconds") for r in runs],
                          "identical_outputs": all(r["tokens"] == runs[0]["tokens"] for r in runs)}
        rec.pop("repeat", None)
        out.append(rec)
    return out


def choose_lengths(methods: Sequence[Method], records: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """Per (dataset, tunable method): the grid point with the best aggregate tokens/s on calibration.

    Aggregate = total new tokens / total seconds over that dataset's calibration prompts (all grid points
    ran on the same prompts). Returns {"length": k, "tokens_per_second": {k: tok/s}, "prompts": n}.
    """
    agg: dict[tuple[str, str], dict[int, list[float]]] = {}
    prompts: dict[tuple[str, str], set] = {}
    by_name = {m.name: m for m in methods}
    for r in records:
        m = by_name.get(r.get("method"))
        if r.get("phase") != CALIBRATION or m is None or not m.tunable or r["params"].get("draft_length") is None:
            continue
        k = int(r["params"]["draft_length"])
        t = agg.setdefault((r["dataset"], m.name), {}).setdefault(k, [0.0, 0.0])
        t[0] += r["new_tokens"]
        t[1] += r["seconds"]
        prompts.setdefault((r["dataset"], m.name), set()).add(r["prompt_id"])
    out = {}
    for key, per_k in agg.items():
        tps = {k: (v[0] / v[1] if v[1] > 0 else 0.0) for k, v in sorted(per_k.items())}
        best = max(tps, key=lambda k: (tps[k], -k))
        out[key] = {"length": best, "tokens_per_second": tps, "prompts": len(prompts[key])}
    return out


# ------------------------------------------------------------------------------------------------ running


class Executor(Protocol):
    """Runs one generation (`run`); may also offer `conversation(method, params)` (an object whose
    `turn(prompt, max_new, reference)` keeps state between turns), `examine` (tie or mismatch) and
    `cost_curve()` (the target's, recorded with every record)."""

    family: str

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None): ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


class ExecutorPool:
    """Executors created on first use and warmed up once; the transformers one runs alone (memory)."""

    def __init__(self, factories: dict[str, Callable[[], Executor]], log: Callable[[str], None] = print) -> None:
        self.factories = factories
        self.live: dict[str, Executor] = {}
        self.log = log

    def get(self, family: str) -> Executor:
        if family not in self.live:
            if family not in self.factories:
                raise CSDraftingError(f"no executor for the {family} methods")
            exclusive_family = family == HF or HF in self.live
            if exclusive_family:
                self.close()
            self.log(f"loading models for the {family} methods ...")
            ex = self.factories[family]()
            self.log(f"warming up the {family} models (one short generation each) ...")
            ex.warmup()
            self.live[family] = ex
        return self.live[family]

    def close(self) -> None:
        for ex in self.live.values():
            ex.close()
        self.live.clear()


def family_order(units: Sequence[Unit], methods: dict[str, Method]) -> list[Unit]:
    """Engine and llama.cpp units interleaved prompt by prompt; the transformers units after them all."""
    return [u for u in units if methods[u.method].family != HF] + [u for u in units if methods[u.method].family == HF]


def execute(
    units: Sequence[Unit],
    methods: Sequence[Method],
    prompts: dict[tuple[str, str, str], PromptIds],
    store: RecordStore,
    pool: ExecutorPool,
    max_new_tokens: int,
    timing: str = DECODE,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    extra: dict | None = None,
    render: Render | None = None,
) -> int:
    """Run the units not yet in the store; return how many ran. Exactness failures are reported loudly.

    `timing` chooses the headline figure of each record (both are recorded); `render` builds a
    conversation's later turns from the method's own answers (needed only when a prompt has several turns).
    """
    from tqdm import tqdm

    by_name = {m.name: m for m in methods}
    pending = [u for u in family_order(units, by_name) if u.key not in store]
    if not pending:
        return 0
    bar = tqdm(total=len(pending), desc="bench", unit="run", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    say = warn or (lambda msg: bar.write(msg, file=sys.stderr))
    pool.log = lambda msg: bar.write(msg, file=sys.stderr)
    choices: dict[tuple[str, str], dict] | None = None
    # units that ran before their baseline (plan's alternate order), by the baseline's key: judged and stored
    # once it is
    later = {u.key for u in pending}
    waiting: dict[str, list[tuple[Unit, Method, Executor, list[Turn], dict]]] = {}
    done = 0

    def store_run(u: Unit, m: Method, ex: Executor, turns: list[Turn], rec: dict, base: dict | None) -> None:
        rec.update(record_fields(turns, timing))
        curve = getattr(ex, "cost_curve", None)
        if curve is not None and curve() is not None:
            rec["target_cost_curve"] = curve()
        store.append(rec)
        report(u, m, turns, base, say)

    try:
        for u in pending:
            m = by_name[u.method]
            bar.set_description(f"{u.phase[:5]} {u.dataset} {u.prompt_id[-12:]} {u.variant}" + (f" r{u.rep}" if u.rep else ""))
            length = u.length
            if u.phase == EVAL and m.tunable:
                if choices is None or (u.dataset, m.name) not in choices:
                    choices = choose_lengths(methods, store.values())
                if (u.dataset, m.name) not in choices:
                    raise CSDraftingError(f"no calibration records for {m.name} on {u.dataset}: cannot choose its draft length")
                length = choices[(u.dataset, m.name)]["length"]
            params = m.resolve(length)
            prompt = prompts[(u.phase, u.dataset, u.prompt_id)]
            base_key = None if m.is_baseline else u.baseline_key(m.baseline)
            base = None if base_key is None else store.get(base_key)
            ex = pool.get(m.family)
            turns = run_turns(ex, m, params, prompt, base, max_new_tokens, render)
            later.discard(u.key)
            rec = {
                "key": u.key, "phase": u.phase, "dataset": u.dataset, "prompt_id": u.prompt_id,
                "category": prompt.category, "group": prompt.group or u.dataset, "method": m.name,
                "variant": u.variant, "repeat": u.rep, "family": m.family, "baseline": m.baseline, "params": params,
                "max_new_tokens": max_new_tokens, "timing": timing,
                "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(extra or {}),
            }
            if base_key is not None:  # this round's own baseline run still to come?
                rec["ran_before_baseline"] = Unit(u.phase, u.dataset, u.prompt_id, m.baseline, rep=u.rep).key in later
            if base is None and base_key in later:  # nothing to check against yet
                waiting.setdefault(base_key, []).append((u, m, ex, turns, rec))
            else:
                store_run(u, m, ex, turns, rec, base)
            for wu, wm, wex, wturns, wrec in waiting.pop(u.key, []):  # this was their baseline
                judge(wex, wturns, store.get(u.key))
                store_run(wu, wm, wex, wturns, wrec, store.get(u.key))
            done += 1
            bar.set_postfix_str(f"{rec['tokens_per_second']:.2f} tok/s" if "tokens_per_second" in rec else "")
            bar.update(1)
    finally:
        bar.close()
    return done


def report(u: Unit, m: Method, turns: Sequence[Turn], base: dict | None, say: Callable[[str], None]) -> None:
    """Say, loudly, where a unit's output differed from its baseline's (a mismatch is a bug)."""
    for k, t in enumerate(turns):
        if t.verdict in (None, IDENTICAL):
            continue
        ref = turns_of(base)[k]["tokens"]
        i = first_difference(t.outcome.tokens, ref)
        where = f"{u.variant} on {u.dataset}/{u.prompt_id}" + (f" (turn {k + 1})" if len(turns) > 1 else "")
        if t.verdict == MISMATCH:
            say(f"!!! EXACTNESS MISMATCH (a bug): {where} differs from {m.baseline} at generated token {i} "
                f"({len(t.outcome.tokens)} vs {len(ref)} tokens): "
                f"{t.divergence.get('describe') if t.divergence else 'not examined'} !!!")
        elif t.verdict == TIE:
            say(f"note: {where} differs from {m.baseline} at a numerical tie: {t.divergence['describe']}")
        else:
            say(f"note: {where} differs from {m.baseline} at generated token {i} (a peer's own code: "
                "not examined)")
