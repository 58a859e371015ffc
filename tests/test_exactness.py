"""Divergence accounting on a fake target whose batched and one-token logits differ by a controlled amount."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from csdrafting import Cascade, CascadeConfig, MaxGram
from csdrafting import exactness as ex
from csdrafting.protocol import CSDraftingError, ModelInfo

V = 6
PROMPT = [0, 1, 2, 3, 4, 5, 0]  # one cycle, so Max-Gram drafts (batched reviews) from the first step
TIE_AT = 9  # generated index of the near-tie; there plain's token is 4 and the runner-up 5 (odd)


class NearTieLM:
    """Greedy text cycles 1, 2, 3, ...; at one position the top two tokens are `gap` apart.

    Row for a context ending in `last`: token (last + 1) % V scores 0, (last + 2) % V scores -1, and so on.
    A pass over more than one token adds `delta` to every odd token (the batch-shape noise): where the
    top two differ in parity, their margin moves by exactly `delta` between the two pass shapes.
    """

    def __init__(self, gap: float = 1.0, delta: float = 0.0, tie_at: int | None = len(PROMPT) + TIE_AT) -> None:
        self.info = ModelInfo("neartie", V, 1000, frozenset(), precision="F64")
        self.gap, self.delta, self.tie_at = gap, delta, tie_at
        self._tokens: list[int] = []

    @property
    def cached_tokens(self) -> Sequence[int]:
        return self._tokens

    def begin(self, prompt: Sequence[int]) -> list[int]:
        return list(prompt)

    def _row(self, ctx: Sequence[int], batched: bool) -> np.ndarray:
        last = ctx[-1]
        row = -np.array([float((t - last - 1) % V) for t in range(V)])
        if len(ctx) == self.tie_at:
            row[(last + 2) % V] = row[(last + 1) % V] - self.gap
        if batched:
            row = row + self.delta * (np.arange(V) % 2)
        return row

    def extend(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray:
        batched = len(tokens) > 1
        rows = []
        for i, t in enumerate(tokens):
            self._tokens.append(int(t))
            if i >= logits_from:
                rows.append(self._row(self._tokens, batched))
        return np.array(rows).reshape(len(rows), V)

    def rollback(self, n: int) -> None:
        del self._tokens[n:]


def _outputs(model: NearTieLM, n: int = 16) -> tuple[list[int], list[int]]:
    plain = Cascade(model, []).generate(PROMPT, n).tokens
    cascade = Cascade(model, [MaxGram()], CascadeConfig.make([[4]])).generate(PROMPT, n).tokens
    return plain, cascade


def test_noise_measurement_recovers_the_controlled_batch_difference():
    noise = ex.measure_batch_noise(NearTieLM(delta=0.003, tie_at=None), [PROMPT, [3, 4]], positions=12, widths=(2, 4))
    assert noise.max == pytest.approx(0.003)
    assert noise.threshold == noise.max
    assert 0 < noise.mean <= noise.p999 <= noise.max
    assert noise.positions == 2 * 2 * 12 and sorted(noise.by_width) == ["2", "4"]
    quiet = ex.measure_batch_noise(NearTieLM(delta=0.0, tie_at=None), [PROMPT], positions=8, widths=(3,))
    assert quiet.max == 0.0


def test_near_tie_flipped_by_batch_noise_is_a_tie():
    model = NearTieLM(gap=0.001, delta=0.002)
    plain, cascade = _outputs(model)
    assert plain != cascade  # the batched review really flipped the near-tie
    d = ex.examine(model, PROMPT, plain, cascade, threshold=0.002)
    assert d.verdict == ex.TIE
    assert (d.position, d.reference_token, d.candidate_token) == (TIE_AT, 4, 5)
    assert d.margin_single == pytest.approx(0.001)
    assert d.margin_batched == pytest.approx(-0.001)  # the replayed review reproduces the flip
    assert "reproduces the flip" in d.reason


def test_flip_beyond_measured_noise_is_a_mismatch():
    # the batched path moved the margin by 0.5 while only 0.002 of noise was measured: a bug, not a tie
    model = NearTieLM(gap=0.3, delta=0.5)
    plain, cascade = _outputs(model)
    assert plain != cascade
    d = ex.examine(model, PROMPT, plain, cascade, threshold=0.002)
    assert d.verdict == ex.MISMATCH and d.position == TIE_AT
    assert d.margin_single == pytest.approx(0.3)
    assert "MISMATCH at generated token 9" in d.describe()


def test_wrong_token_at_a_confident_position_is_a_mismatch():
    model = NearTieLM(gap=1.0, delta=0.0)
    plain, cascade = _outputs(model)
    assert plain == cascade  # no noise: the cascade is exact
    broken = plain[:3] + [(plain[3] + 3) % V] + plain[4:]
    d = ex.examine(model, PROMPT, plain, broken, threshold=0.01)
    assert d.verdict == ex.MISMATCH and d.position == 3
    assert d.margin_single == pytest.approx(3.0)


def test_unmeasured_noise_never_yields_a_tie_and_identical_outputs_are_identical():
    model = NearTieLM(gap=0.001, delta=0.002)
    plain, cascade = _outputs(model)
    d = ex.examine(model, PROMPT, plain, cascade, threshold=None)
    assert d.verdict == ex.MISMATCH and "never measured" in d.reason
    assert ex.examine(model, PROMPT, plain, list(plain), threshold=0.1).verdict == ex.IDENTICAL
    short = ex.examine(model, PROMPT, plain, plain[:-2], threshold=0.1)
    assert short.verdict == ex.MISMATCH and short.position == len(plain) - 2 and "prefix" in short.reason


def test_noise_table_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path))
    noise = ex.measure_batch_noise(NearTieLM(delta=0.004, tie_at=None), [PROMPT], positions=6, widths=(2,))
    assert ex.noise_threshold("neartie [F64]") is None
    path = ex.save_noise(noise)
    assert path.parent == tmp_path
    assert ex.noise_threshold(NearTieLM()) == pytest.approx(0.004)
    (tmp_path / "batch_noise.json").write_text("{broken")
    with pytest.raises(CSDraftingError, match="bench noise"):
        ex.noise_threshold("neartie [F64]")


def test_tally_counts_each_verdict():
    t = ex.Tally()
    for v in (ex.IDENTICAL, ex.IDENTICAL, ex.TIE, ex.MISMATCH):
        t.add(v)
    assert (t.identical, t.tie, t.mismatch, t.total) == (2, 1, 1, 4)
    assert t.cell() == "2 / 1 / 1 ⚠️"
    with pytest.raises(CSDraftingError):
        t.add("maybe")


def test_bench_classify_examines_engine_divergences_and_counts_peer_ones():
    from csdrafting.bench.runner import DIVERGENT, classify

    model = NearTieLM(gap=0.001, delta=0.002)
    plain, cascade = _outputs(model)

    class Engine:  # what EngineExecutor.examine does, on the fake target with a measured threshold
        def examine(self, prompt, reference, candidate):
            return ex.examine(model, prompt, reference, candidate, 0.002, split_last=True)

    base = {"tokens": plain}
    assert classify(Engine(), PROMPT, None, cascade) == (None, None)
    assert classify(Engine(), PROMPT, base, list(plain)) == (ex.IDENTICAL, None)
    verdict, details = classify(Engine(), PROMPT, base, cascade)
    assert verdict == ex.TIE and details["position"] == TIE_AT and "TIE at generated token 9" in details["describe"]
    assert classify(object(), PROMPT, base, cascade) == (DIVERGENT, None)  # a peer cannot be examined


def test_noise_command_refuses_bad_settings_before_loading_anything(capsys):
    from csdrafting.bench.cli import main

    assert main(["noise", "--model", "qwen2.5-coder-1.5b:Q4_K_M", "--widths", "1,4"]) == 2
    assert "every width >= 2" in capsys.readouterr().err
    assert main(["noise", "--model", "qwen2.5-coder-1.5b:Q4_K_M", "--positions", "0"]) == 2


@pytest.mark.parametrize("gap,delta,threshold,code,word", [
    (0.001, 0.002, 0.002, 0, "1 differing at a numerical tie"),
    (0.3, 0.5, 0.002, 1, "1 mismatched"),
])
def test_demo_reports_ties_and_fails_on_mismatches(monkeypatch, gap, delta, threshold, code, word):
    import io
    from types import SimpleNamespace

    import csdrafting.demo as demo
    from csdrafting.spec import DEFAULT_SPEC

    model = NearTieLM(gap=gap, delta=delta)
    model.info = ModelInfo("neartie", V, 1000, frozenset(), precision="F64")
    monkeypatch.setattr(demo, "build", lambda spec: (model, [MaxGram()], CascadeConfig.make([[4]])))
    monkeypatch.setattr(demo, "load", lambda ds, limit: [SimpleNamespace(id="p0", text="x")])
    monkeypatch.setattr(demo, "encode", lambda m, text: list(PROMPT))

    class Stream:
        def __init__(self, m):
            pass

        def push(self, toks):
            return "".join(str(t) for t in toks)

    monkeypatch.setattr(demo, "StreamText", Stream)
    monkeypatch.setattr(demo, "noise_threshold", lambda m: threshold)
    out = io.StringIO()
    assert demo.run_demo(DEFAULT_SPEC, n_prompts=1, max_new_tokens=16, out=out) == code
    text = out.getvalue()
    assert word in text and "at generated token 9" in text
