"""The methods a benchmark compares, as data, and the oracle drafter.

Every engine method is a `Cascade` configuration over the SAME loaded models (same target, same precision):

===========  ==================================================================================================
plain        the target alone, one token per forward pass (the baseline of every engine method)
sd:<model>   classic speculative decoding: one neural drafter drafting k tokens autoregressively, K = [[k]];
             k is chosen from a small grid on calibration prompts
maxgram      Max-Gram alone as the drafter, K = [[k]] (k from a grid)
vertical     a real vertical cascade: the spec's neural drafters then Max-Gram, each level reviewing only the
             level right below it (the target reviews only D1's output, D1 only D2's, ..., the last neural
             drafter only Max-Gram's drafts): K is diagonal in increments, from the spec's diagonal where it
             is positive, else the target's row total (row 0) and VERTICAL_REVIEW_K (lower rows)
horizontal   the cascade's row 0 (D1 fills the first positions, D2 the next, ..., Max-Gram the last) with every
             row below it zero: no drafter reviews another, each drafts its share autoregressively
             (the engine treats a zero K row exactly so)
csd          full CS Drafting: the cascade spec as given (`--config`, else the built-in default)
oracle       the target's own greedy output (from `plain` on the same prompt) offered as a free draft of k
             tokens (k from a grid): the ceiling for any drafter at this cost of verification
===========  ==================================================================================================

Peers run by their own code and are compared with plain decoding of their own backend, in the same run:
``llama-plain`` / ``llama-pld`` (llama-cpp-python's high-level ``Llama``, without and with its
``LlamaPromptLookupDecoding``), ``hf-plain`` / ``hf-assisted`` / ``hf-pld`` (transformers ``generate``
plain, with ``assistant_model=`` and with ``prompt_lookup_num_tokens=``, float32), and llama.cpp's own C++
programs: ``llama-cpp-plain`` (``llama-completion``) and ``llama-cpp-draft-simple`` / ``-ngram-map-k`` /
``-ngram-mod`` / ``-ngram-cache`` (``llama-speculative-simple --spec-type ...``; see `llamacpp_bin`).

Engine methods carry their cascade as data: drafters, cumulative K, lenience, bottom length, and
`config`, any further `CascadeConfig` fields (by name) merged into the configuration the executor builds;
csd, vertical and horizontal start from the spec's own configuration, so fields the spec carries reach
them without changes here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..cascade.config import LEGACY_FIELDS, KMatrix
from ..drafters import registry
from ..drafters.base import StatisticalDrafter
from ..protocol import CSDraftingError
from ..spec import CascadeSpec, check_drafter_settings, neural, split_ref
from .llamacpp_bin import BIN_BASELINE, BIN_PEERS

# what each family of methods is compared with, and which output it must reproduce exactly
ENGINE, LLAMA, HF, LLAMA_BIN = "engine", "llama", "hf", "llamacpp-bin"
BASELINE = {ENGINE: "plain", LLAMA: "llama-plain", HF: "hf-plain", LLAMA_BIN: BIN_BASELINE}
PEERS = ("llama-pld", "hf-assisted", "hf-pld", *BIN_PEERS)
# the quota of each neural drafter reviewing the level below in the vertical row, where the spec has none
VERTICAL_REVIEW_K = 4
ENGINE_METHODS = ("plain", "sd", "maxgram", "vertical", "horizontal", "csd", "oracle")
# the paper's statistical level: what the maxgram row runs, and the vertical row's bottom when the spec has none
PAPER_BOTTOM = "maxgram"
ORACLE = "oracle"  # a drafter reference only the bench knows (see Oracle)

# small on purpose: every point runs on every calibration prompt (about 40 s each for 128 tokens here)
DEFAULT_GRIDS = {
    "sd": (2, 4, 6, 8),
    "maxgram": (4, 8, 16),
    "oracle": (16, 32, 64),
    "llama-pld": (4, 10),
}
# used when a suite does not calibrate (quick): a middle of each grid, or the library default for peers
DEFAULT_K = {"sd": 4, "maxgram": 8, "oracle": 16, "llama-pld": 10, "hf-pld": 10}


@dataclass(frozen=True)
class Method:
    """One row of the results table.

    `k` is a cumulative K matrix for fixed engine methods; `grid` lists draft lengths to calibrate, in which
    case `k_template` says how a length becomes the method's parameters ("[[k]]" for engine methods,
    "num_pred_tokens" for llama's prompt lookup). `drafters` are model refs as in a cascade spec.
    """

    name: str
    family: str  # ENGINE, LLAMA or HF
    description: str
    drafters: tuple[str, ...] = ()
    k: tuple[tuple[int, ...], ...] | None = None
    lenience: float = 1.0
    bottom_length: int | None = None
    grid: tuple[int, ...] = ()
    default: int | None = None  # the draft length used when not calibrating
    params: dict = field(default_factory=dict, compare=False)  # fixed extra parameters (peers)
    config: dict = field(default_factory=dict)  # further CascadeConfig fields by name (engine methods)
    from_spec: bool = False  # start from the spec's CascadeConfig (its extra fields too), then set K etc.

    @property
    def baseline(self) -> str:
        return BASELINE[self.family]

    @property
    def is_baseline(self) -> bool:
        return self.name == self.baseline

    @property
    def tunable(self) -> bool:
        return bool(self.grid)

    def variant(self, length: int | None) -> str:
        """Name of one grid point, e.g. 'sd:qwen2.5-coder-0.5b:Q4_K_M@k=4'."""
        return self.name if length is None else f"{self.name}@k={length}"

    def resolve(self, length: int | None = None) -> dict:
        """The concrete parameters of a run: K (cumulative) etc. `length` picks a grid point."""
        out = dict(self.params)
        if self.grid or self.default is not None:
            length = self.default if length is None else length
            if length is None:
                raise CSDraftingError(f"{self.name} needs a draft length")
            out["draft_length"] = length
            if self.family == ENGINE:
                out["k"] = [[length]]
        elif self.k is not None:
            out["k"] = [list(r) for r in self.k]
        if self.family == ENGINE:
            out.setdefault("k", None)
            out["lenience"] = self.lenience
            out["bottom_length"] = self.bottom_length
            out["drafters"] = list(self.drafters)
            if self.config:
                out["config"] = dict(self.config)
            if self.from_spec:
                out["from_spec"] = True
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["baseline"] = self.baseline
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Method":
        """A method as run.json keeps it (older files: `maxgram_length`, suffix settings as flat keys)."""
        d = {LEGACY_FIELDS.get(k, k): v for k, v in d.items() if k != "baseline"}
        params = dict(d.get("params") or {})
        if "statistical" in params:  # before per-drafter settings: the --also config's flat fields
            flat = params.pop("statistical")
            params["drafter_settings"] = check_drafter_settings(CascadeSpec.parse({"target": "-", **flat}).drafter_settings)
        d["params"] = params
        for key in ("drafters", "grid"):
            if key in d:
                d[key] = tuple(d[key])
        if d.get("k"):
            d["k"] = tuple(tuple(r) for r in d["k"])
        return cls(**d)


class Oracle(StatisticalDrafter):
    """A free drafter that knows the answer: it proposes the next tokens of a reference continuation.

    Given the target's own greedy output for this prompt as the reference, every proposal is accepted, so
    the cascade [target, oracle] with K = [[k]] shows what a perfect k-token drafter would gain at this
    verification cost. It proposes nothing once the text leaves the reference.
    """

    def __init__(self, name: str = ORACLE) -> None:
        self.name = name
        self.prompt: list[int] = []
        self.reference: list[int] = []

    def set_reference(self, prompt: Sequence[int], reference: Sequence[int]) -> None:
        self.prompt = [int(t) for t in prompt]
        self.reference = [int(t) for t in reference]

    def propose(self, seq: Sequence[int], n: int) -> list[int]:
        p = len(self.prompt)
        gen = list(seq[p:])
        if list(seq[:p]) != self.prompt or gen != self.reference[: len(gen)]:
            return []
        return self.reference[len(gen) : len(gen) + n]


def model_name(ref: str) -> str:
    """'qwen2.5-coder-0.5b:Q4_K_M' -> 'qwen2.5-coder-0.5b'; a path -> its file/directory name."""
    from pathlib import Path

    name, _ = split_ref(ref)
    return Path(name).name.removesuffix(".gguf")


def model_label(ref: str) -> str:
    """Short and unambiguous: 'qwen2.5-coder-0.5b:Q4_K_M' stays so (the precision matters); a path -> its name."""
    name, tier = split_ref(ref)
    return f"{model_name(ref)}:{tier}" if tier else model_name(ref)


def vertical_k(k: KMatrix | None, n_levels: int, spec_drafters: Sequence[str] = ()) -> list[list[int]]:
    """Increments of a vertical cascade over `n_levels` drafters (the last Max-Gram): diagonal only.

    Row r's quota is the spec's diagonal increment K[r][r] where the spec's drafter r is the same level
    and the entry is positive; else row 0 takes the spec's whole row-0 draft length (or the sd default) and
    lower rows VERTICAL_REVIEW_K. A zero there would make that drafter draft by itself and leave Max-Gram
    unused: speculative decoding under a wrong name.
    """
    inc = k.increments() if k is not None else []
    same = list(spec_drafters) if len(spec_drafters) == n_levels and registry.is_statistical(spec_drafters[-1]) else []
    rows = [[0] * n_levels for _ in range(n_levels)]
    for r in range(n_levels):
        v = inc[r][r] if same and r < len(inc) else 0
        if v <= 0:
            v = (sum(inc[0]) if inc else DEFAULT_K["sd"]) if r == 0 else VERTICAL_REVIEW_K
        rows[r][r] = v
    return rows


def horizontal_k(k: KMatrix) -> list[list[int]]:
    """Row 0 of the cascade (the target's draft, filled by D1, D2, ..., Max-Gram in turn), zero below."""
    inc = k.increments()
    return [list(inc[0])] + [[0] * len(inc) for _ in inc[1:]]


def _cumulative(rows: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return KMatrix.parse(rows, "increments").cumulative


def build_methods(
    spec: CascadeSpec,
    methods: Sequence[str] = ENGINE_METHODS,
    peers: Sequence[str] = (),
    sd_drafters: Sequence[str] | None = None,
    calibrate: bool = True,
    grids: dict[str, Sequence[int]] | None = None,
    also: Sequence[tuple[str, CascadeSpec]] = (),
) -> list[Method]:
    """The methods of a benchmark, baselines first (each family's baseline precedes its other methods).

    `methods` picks engine methods by kind (names in ENGINE_METHODS; 'plain' is always included when any
    engine method is). `sd_drafters` are the neural drafters that get a classic speculative decoding row
    (default: every neural drafter of the spec). `vertical` and `horizontal` need at least two drafters in
    the spec and are skipped (with a note in the returned list's descriptions) otherwise. `calibrate=False`
    collapses every grid to its default point. `also` adds one engine row per (name, cascade config), run on
    the same target (its drafters, K, lenience, bottom length, dynamic flag and drafter settings; its cost
    curves come from the bench's own spec).
    """
    grids = {**DEFAULT_GRIDS, **(grids or {})}
    unknown = set(methods) - set(ENGINE_METHODS)
    if unknown:
        raise CSDraftingError(f"unknown method(s) {sorted(unknown)}; choose from {list(ENGINE_METHODS)}")
    bad_peers = set(peers) - set(PEERS) - {BIN_BASELINE}
    if bad_peers:
        raise CSDraftingError(f"unknown peer(s) {sorted(bad_peers)}; choose from {list(PEERS)}")
    spec.validate()
    sd_drafters = list(neural(spec.drafters) if sd_drafters is None else sd_drafters)
    if any(registry.is_statistical(d) for d in sd_drafters):
        raise CSDraftingError("a statistical drafter alone is the method 'maxgram' (or an --also config), not an sd drafter")

    def tuned(kind: str) -> dict:
        # one value is the draft length to use (with or without calibration prompts); several are a grid that
        # calibration prompts choose from (without them the kind's default length is used)
        grid = tuple(grids.get(kind, ()))
        if len(grid) == 1:
            return {"grid": (), "default": grid[0]}
        return {"grid": grid if calibrate else (), "default": DEFAULT_K[kind]}

    wanted = list(dict.fromkeys(methods))
    out = [Method("plain", ENGINE, "target alone, autoregressive (the baseline)")] if wanted else []
    for kind in wanted:
        out += _engine_methods(kind, spec, sd_drafters, tuned)
    out += [_also_method(name, other, spec) for name, other in also]
    out += _peer_methods(peers, sd_drafters, tuned)
    names = [m.name for m in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise CSDraftingError(f"duplicate method names {sorted(dup)}: give each sd drafter once")
    return out


def _engine_methods(kind: str, spec: CascadeSpec, sd_drafters: list[str], tuned) -> list[Method]:
    """The rows of one engine method kind (none where the spec cannot make it)."""
    models = neural(spec.drafters)
    spec_k = spec.k
    from_spec = dict(lenience=spec.lenience, bottom_length=spec.bottom_length, from_spec=True)
    if kind == "sd":
        return [Method(f"sd:{model_label(ref)}", ENGINE, f"speculative decoding, drafter {ref} drafting k tokens "
                       "autoregressively", drafters=(ref,), **tuned("sd")) for ref in sd_drafters]
    if kind == "maxgram":
        return [Method("maxgram", ENGINE, "Max-Gram alone as the drafter, k tokens per proposal",
                       drafters=(PAPER_BOTTOM,), **tuned("maxgram"))]
    if kind == "vertical" and models:  # needs at least one neural drafter to review the bottom
        # the vertical row ends in the spec's own statistical level (Max-Gram when the spec has none)
        bottom = spec.drafters[-1] if registry.is_statistical(spec.drafters[-1]) else PAPER_BOTTOM
        chain = tuple(models) + (bottom,)
        rows = vertical_k(spec_k, len(chain), spec.drafters)
        return [Method("vertical", ENGINE, "vertical cascade only: each level reviews only the drafts of the level "
                       f"right below it, down to {bottom}", drafters=chain, k=_cumulative(rows), **from_spec)]
    if kind == "horizontal" and spec_k is not None and spec_k.size >= 2:  # needs two drafters at least
        return [Method(kind, ENGINE, "horizontal cascade only: the target reviews drafts filled by each drafter in "
                       "turn, no drafter reviews another", drafters=tuple(spec.drafters),
                       k=_cumulative(horizontal_k(spec_k)), **from_spec)]
    if kind == "csd" and spec_k is not None:
        return [Method("csd", ENGINE, f"CS Drafting: {spec.describe()}", drafters=tuple(spec.drafters),
                       k=spec_k.cumulative, **from_spec)]
    if kind == "oracle":
        return [Method("oracle", ENGINE, "the target's own greedy output as a free k-token draft (ceiling)",
                       drafters=(ORACLE,), **tuned("oracle"))]
    return []


def _also_method(name: str, other: CascadeSpec, spec: CascadeSpec) -> Method:
    other.validate()
    if other.target != spec.target:
        raise CSDraftingError(f"--also {name}: its target {other.target} is not the bench's target {spec.target}")
    # its statistical drafters run with its own settings (the bench's spec gives the cost curves)
    return Method(f"cfg:{name}", ENGINE, f"config {name}: {other.describe()}", drafters=tuple(other.drafters),
                  k=other.k.cumulative if other.k else None, lenience=other.lenience, bottom_length=other.bottom_length,
                  config={"dynamic": other.dynamic}, params={"drafter_settings": other.drafter_settings})


def _peer_methods(peers: Sequence[str], sd_drafters: list[str], tuned) -> list[Method]:
    """The peers' rows, each family's plain decoding first."""
    out = []
    if "llama-pld" in peers:
        out.append(Method("llama-plain", LLAMA, "llama-cpp-python Llama.generate, greedy, no draft model"))
        out.append(Method("llama-pld", LLAMA, "llama-cpp-python Llama with LlamaPromptLookupDecoding(num_pred_tokens=k)",
                          params={"max_ngram_size": 2}, **tuned("llama-pld")))
    hf = [p for p in peers if p.startswith("hf-")]
    if hf:
        out.append(Method("hf-plain", HF, "transformers generate, greedy, float32"))
        if "hf-assisted" in hf:
            out.append(Method("hf-assisted", HF, "transformers generate(assistant_model=...), library defaults",
                              drafters=tuple(sd_drafters[:1])))
        if "hf-pld" in hf:
            out.append(Method("hf-pld", HF, "transformers generate(prompt_lookup_num_tokens=k)",
                              default=DEFAULT_K["hf-pld"]))
    bin_peers = [p for p in BIN_PEERS if p in peers]
    if bin_peers or BIN_BASELINE in peers:
        out.append(Method(BIN_BASELINE, LLAMA_BIN, "llama.cpp's own llama-completion (plain decoding, greedy)",
                          params={"spec_type": "none"}))
        for p in bin_peers:
            what = p.removeprefix("llama-cpp-")
            drafters = tuple(sd_drafters[:1]) if what == "draft-simple" else ()
            if what == "draft-simple" and not drafters:
                raise CSDraftingError("llama-cpp-draft-simple needs a neural drafter: give --sd-drafter")
            out.append(Method(p, LLAMA_BIN, f"llama.cpp's own llama-speculative-simple --spec-type {what}"
                              + (f" -md {drafters[0]}" if drafters else "") + ", library defaults, greedy",
                              drafters=drafters, params={"spec_type": what}))
    return out
