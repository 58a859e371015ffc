"""Cascade config files and the flags that make them: K read once into a KMatrix, drafter settings kept per
drafter, and every older spelling still loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from csdrafting.cascade.config import KMatrix
from csdrafting.flags import add_cascade_args, spec_from_args
from csdrafting.protocol import CSDraftingError
from csdrafting.spec import DEFAULT_SPEC, CascadeSpec

CONFIGS = Path(__file__).resolve().parents[1] / "docs" / "bench" / "configs"
T = "qwen2.5-coder-1.5b:Q4_K_M"


def parse(argv: list[str]) -> CascadeSpec:
    p = argparse.ArgumentParser()
    add_cascade_args(p)
    return spec_from_args(p.parse_args(argv))


def test_k_is_a_kmatrix_from_the_file_on(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"target": T, "drafters": ["suffix"], "k": [[16]]}))
    assert CascadeSpec.load(path).k == KMatrix.parse([[16]])
    path.write_text(json.dumps({"target": T, "drafters": ["qwen2.5-coder-0.5b:Q4_K_M", "maxgram"],
                                "k": [[4, 8], [0, 8]], "k_spelling": "increments"}))
    spec = CascadeSpec.load(path)
    assert isinstance(spec.k, KMatrix) and spec.k.cumulative == ((4, 12), (0, 8))
    saved = spec.to_json()
    assert saved["k"] == [[4, 12], [0, 8]] and saved["k_spelling"] == "cumulative"
    assert CascadeSpec.from_json(saved) == spec
    path.write_text(json.dumps({"target": T, "drafters": ["suffix"], "k": [[4, 2]]}))
    with pytest.raises(CSDraftingError, match="square"):
        CascadeSpec.load(path)


def test_k_spelling_needs_k(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"target": T, "drafters": ["qwen2.5-coder-0.5b:Q4_K_M", "maxgram"],
                                "k": [[4, 8], [0, 8]], "k_spelling": "increments"}))
    with pytest.raises(CSDraftingError, match="--k-spelling says how --k is written; give --k"):
        parse(["--config", str(path), "--k-spelling", "cumulative"])
    with pytest.raises(CSDraftingError, match="give --k"):
        parse(["--k-spelling", "increments"])
    assert parse(["--config", str(path)]).k.cumulative == ((4, 12), (0, 8))  # read in the file's own spelling
    got = parse(["--config", str(path), "--k", "[[2,2],[0,3]]", "--k-spelling", "increments"])
    assert got.k.cumulative == ((2, 4), (0, 3))
    with pytest.raises(CSDraftingError, match="--k: K must be a JSON list"):
        parse(["--k", "[[2,"])
    from csdrafting.cli import main

    assert main(["prepare", "--k-spelling", "increments"]) == 2
    assert "give --k" in capsys.readouterr().err


def test_shipped_configs_load_with_their_old_keys():
    store = CascadeSpec.load(CONFIGS / "q4-suffix-store.json")
    assert store.drafter_settings == {"suffix": {"persist": True}}
    no_store = CascadeSpec.load(CONFIGS / "q4-default-no-store.json")
    # suffix_persist: false is the default: the same cascade as the built-in one
    assert no_store.drafter_settings == {} and {**no_store.to_json(), "note": ""} == {**DEFAULT_SPEC.to_json(), "note": ""}
    for path in sorted(CONFIGS.glob("*.json")):
        spec = CascadeSpec.load(path)
        assert CascadeSpec.from_json(spec.to_json()) == spec, path.name


def test_old_top_level_keys_become_drafter_settings(tmp_path):
    path = tmp_path / "old.json"
    old = {"target": T, "drafters": ["suffix"], "k": [[8]], "maxgram_length": 3, "bigram": None,
           "suffix_calibration": "mine.suffix.json", "suffix_max_ngram": 8, "suffix_min_count": 2,
           "suffix_persist": True}
    path.write_text(json.dumps(old))
    spec = CascadeSpec.load(path)
    assert spec.bottom_length == 3 and spec.cascade_config().bottom_length == 3
    assert spec.drafter_settings == {
        "suffix": {"calibration": str(tmp_path / "mine.suffix.json"), "max_ngram": 8, "min_count": 2,
                   "persist": True, "bigram": None},
        "maxgram": {"bigram": None},
    }
    new = spec.to_json()
    assert not set(new) & {"maxgram_length", "bigram", "suffix_persist", "suffix_calibration"}
    assert new["bottom_length"] == 3 and CascadeSpec.from_json(new) == spec
    for bad, message in (({**old, "bottom_length": 4}, "both 'maxgram_length'"),
                         ({**old, "drafter_settings": {"suffix": {"persist": False}}}, "'suffix_persist'.*keep the second"),
                         ({**old, "drafter_settings": {"nope": {}}}, "no statistical drafter named 'nope'"),
                         ({**old, "drafter_settings": {"suffix": {"depth": 3}}}, "no setting 'depth'"),
                         ({**old, "suffix_persist": "yes"}, "'persist' must be a bool"),
                         ({**old, "suffix_max_ngram": 0}, "'max_ngram' must be >= 1"),
                         ({**old, "suffix_store": True}, r"unknown keys in cascade config: \['suffix_store'\]")):
        path.write_text(json.dumps(bad))
        with pytest.raises(CSDraftingError, match=message):
            CascadeSpec.load(path)


def test_drafter_setting_flags_come_from_the_registry(tmp_path):
    spec = parse(["--suffix-persist", "--suffix-max-ngram", "6", "--suffix-calibration", "none"])
    assert spec.drafter_settings == {"suffix": {"persist": True, "max_ngram": 6, "calibration": None}}
    assert parse([]).drafter_settings == {}
    path = tmp_path / "c.json"
    CascadeSpec.from_json(json.loads((CONFIGS / "q4-suffix-store.json").read_text())).save(path)
    assert parse(["--config", str(path), "--no-suffix-persist"]).drafter_settings == {}
    spec = parse(["--drafter", "maxgram", "--maxgram-bigram", "none", "--maxgram-length", "5"])
    assert spec.drafter_settings == {"maxgram": {"bigram": None}} and spec.bottom_length == 5
    assert spec.k == KMatrix.parse([[8]])  # a new chain of drafters gets the default K
    with pytest.raises(SystemExit):
        parse(["--suffix-max-ngram", "many"])


def test_build_goes_through_the_registry(monkeypatch):
    from csdrafting import spec as spec_mod
    from csdrafting.drafters.suffix import SuffixDrafter

    class Fake:
        class info:
            vocab_size = 96

    monkeypatch.setattr(spec_mod, "load_model", lambda *a, **k: Fake())
    spec = CascadeSpec(target=T, drafters=["suffix"], k=[[4]], drafter_settings={"suffix": {"max_ngram": 5,
                                                                                             "calibration": None}})
    target, drafters, config = spec_mod.build(spec, progress=False)
    assert isinstance(drafters[0], SuffixDrafter) and drafters[0].max_ngram == 5 and drafters[0].calibration is None
    assert drafters[0].bigram is None  # the packaged table does not fit a 96-token vocabulary
    assert config.k == KMatrix.parse([[4]])


def test_cost_curve_is_measured_once_per_machine_and_model(tmp_path, monkeypatch):
    """The default cascade's target curve is measured on first use and kept; another thread count (or model)
    is measured anew; a stale entry is measured again."""
    import table_lm
    from csdrafting import spec as spec_mod
    from csdrafting.cascade import planning

    monkeypatch.setenv("CSDRAFTING_CACHE", str(tmp_path))
    calls = []
    real = planning.measure
    monkeypatch.setattr(planning, "measure", lambda m, grid, *a, **k: calls.append(tuple(grid)) or real(m, grid, reps=1))
    target, _ = table_lm.family()
    a = spec_mod.measured_curve(target, threads=2, progress=False)
    b = spec_mod.measured_curve(target, threads=2, progress=False)
    assert a == b and calls == [planning.REVIEW_GRID]
    spec_mod.measured_curve(target, threads=1, progress=False)
    spec_mod.measured_curve(target, threads=2, target=False, progress=False)  # a drafter: short drafts only
    assert calls[1:] == [planning.REVIEW_GRID, planning.QUICK_GRID]
    monkeypatch.setattr(spec_mod, "CURVE_DAYS", 0)
    spec_mod.measured_curve(target, threads=2, progress=False)
    assert len(calls) == 4
    assert DEFAULT_SPEC.k == KMatrix.parse([[64]])
    assert max(planning.REVIEW_GRID) == 65  # a 64-token draft (a cap of 64 in a config) is priced too
