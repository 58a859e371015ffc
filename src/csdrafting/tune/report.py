"""The tuning report (`<out>.report.json`): where it lies, and the JSON of what `--validate` reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .acceptance_stats import Trace
from .speed import Config


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def ranked_json(r) -> dict:
    """A searched configuration: its score, the analytic prediction and, with traces, the replay."""
    d = {"score": r.score, "analytic_score": r.analytic, **r.prediction.to_json()}
    if r.replay is not None:
        d["replay"] = {"tokens_per_target_pass": r.replay.tokens_per_step, "tokens_per_second": r.replay.tokens_per_second,
                       "decode_tokens_per_second": r.replay.decode_tokens_per_second, "passes": r.replay.passes}
    return d


def config_from(d: dict) -> Config:
    """A configuration back from `ranked_json` (reports before the rename say maxgram_length)."""
    return Config(tuple(d["drafters"]), tuple(tuple(r) for r in d["k"]) if d["k"] else None,
                  d.get("bottom_length", d.get("maxgram_length")))


def traces_to_json(traces) -> list[dict]:
    return [{"prompt": tr.prompt, "tokens": tr.tokens, "greedy": {k: v.tolist() for k, v in tr.greedy.items()},
             "proposals": tr.proposals, "match_length": tr.match_length} for tr in traces]


def traces_from_json(data: list[dict]) -> list[Trace]:
    """Traces back from a report; reports before per-drafter proposals hold Max-Gram's as "maxgram"."""
    out = []
    for d in data:
        proposals = d.get("proposals") or ({"maxgram": d["maxgram"]} if d.get("maxgram") else {})
        out.append(Trace(d["prompt"], d["tokens"], {k: np.array(v, dtype=np.int64) for k, v in d["greedy"].items()},
                         proposals, d["match_length"]))
    return out
