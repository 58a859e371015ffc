"""One /metrics for all replicas: the sum of their Prometheus expositions, under the same names.

Every replica renders its counters with metrics.ServerMetrics; summing sample by sample (same name, same
labels) gives the service's counters, as if one server had served every request (per-level acceptance
is a ratio of two summed counters, so it stays right). Counters of a replica that is gone (killed,
scaled down) are kept at their last values, so a service counter never goes down. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Family:
    help: str = ""
    kind: str = "untyped"
    samples: dict[str, float] = field(default_factory=dict)  # "name{labels}" -> value, first-seen order
    floats: set[str] = field(default_factory=set)  # samples written as floats by some replica


def sum_expositions(texts: list[str], counters_of: list[str] = ()) -> str:
    """Prometheus text (format 0.0.4) whose samples are the sums of the inputs' samples; of `counters_of`
    only the counters count (the replicas' snapshots, whose gauges are out of date)."""
    families: dict[str, _Family] = {}
    for text, alive in [(t, True) for t in texts] + [(t, False) for t in counters_of]:
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name, _, help_ = line[7:].partition(" ")
                fam = families.setdefault(name, _Family())
                fam.help = fam.help or help_
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                families.setdefault(name, _Family()).kind = kind
            elif line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                fam = families.setdefault(key.partition("{")[0], _Family())  # sample name = family name here
                if not alive and fam.kind != "counter":
                    continue
                fam.samples[key] = fam.samples.get(key, 0) + float(value)
                if not _is_int(value):
                    fam.floats.add(key)
    out: list[str] = []
    for name, fam in families.items():
        if fam.help:
            out.append(f"# HELP {name} {fam.help}")
        out.append(f"# TYPE {name} {fam.kind}")
        for key, value in fam.samples.items():
            out.append(f"{key} {repr(value) if key in fam.floats else int(value)}")
    return "\n".join(out) + "\n"


def _is_int(value: str) -> bool:
    return value.lstrip("-").isdigit()
