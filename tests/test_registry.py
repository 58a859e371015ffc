"""A new drafting source is one class plus one registry entry: nothing else in the package changes.

The toy drafter below is defined here and registered here, and then runs through every front end that
builds drafters: a cascade config file, `csdrafting generate` (with a flag generated from its setting),
the bench's engine executor and a served request, each giving the target's own greedy text.
"""

from __future__ import annotations

import json

import pytest
import torch

import tiny
from csdrafting.cascade.engine import Cascade
from csdrafting.drafters import registry
from csdrafting.drafters.base import StatisticalDrafter
from csdrafting.protocol import CSDraftingError

TOY = "toy-repeat"
PROMPT = "abcabcabcabc"  # the tiny tokenizer below drops spaces; a repetitive prompt the toy drafts well on


class RepeatLast(StatisticalDrafter):
    """Proposes the token `period` places back, `times` tokens at most: a repetition detector."""

    name = "repeat-last"

    def __init__(self, period: int, times: int) -> None:
        self.period, self.times = period, times
        self.calls = 0

    def propose(self, seq, n):
        self.calls += 1
        out = list(seq)
        for _ in range(min(n, self.times)):
            out.append(out[-self.period])
        return out[len(seq):]


ENTRY = registry.DrafterEntry(
    TOY, "repeats what came `period` tokens earlier", lambda s, vocab: RepeatLast(s["period"], s["times"]),
    (registry.Setting("period", int, 3, "how far back to copy from", minimum=1),
     registry.Setting("times", int, 2, "tokens per proposal", minimum=1)),
)


@pytest.fixture
def toy():
    registry.register(ENTRY)
    yield ENTRY
    registry.unregister(TOY)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Qwen2 checkpoint with a one-character-per-token tokenizer, as a directory on disk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{chr(i - 3 + 32): i for i in range(3, tiny.VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    path = tmp_path_factory.mktemp("tiny-target")
    tiny.causal(0, dtype=torch.float32).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(path)
    return path


@pytest.fixture
def config_file(tmp_path, model_dir, toy):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"target": str(model_dir), "backend": "hf", "drafters": [TOY], "k": [[6]],
                                "drafter_settings": {TOY: {"times": 4}}}))
    return path


def _plain(target, ids, n):
    return Cascade(target).generate(ids, n).tokens


def test_the_toy_drafter_is_a_registered_statistical_drafter(toy):
    assert registry.is_statistical(TOY) and TOY in registry.names()
    d = registry.build(TOY, {"times": 5}, vocab_size=None)
    assert isinstance(d, RepeatLast) and (d.period, d.times) == (3, 5)
    with pytest.raises(CSDraftingError, match="'times' must be >= 1"):
        registry.build(TOY, {"times": 0})
    with pytest.raises(CSDraftingError, match="no setting 'speed'.*period, times"):
        registry.build(TOY, {"speed": 2})
    with pytest.raises(CSDraftingError, match="registered already"):
        registry.register(registry.DrafterEntry(TOY, "another", ENTRY.factory))


def test_config_file_and_generate(config_file, tmp_path, capsys):
    from csdrafting.cli import main
    from csdrafting.spec import CascadeSpec, build
    from csdrafting.text import encode

    spec = CascadeSpec.load(config_file)
    assert spec.drafters == [TOY] and spec.drafter_settings == {TOY: {"times": 4}}
    target, drafters, config = build(spec, progress=False)
    assert isinstance(drafters[0], RepeatLast) and drafters[0].times == 4
    ids = encode(target, PROMPT)
    want = _plain(target, ids, 16)
    res = Cascade(target, drafters, config).generate(ids, 16)
    assert res.tokens == want and res.metrics.levels[1].drafted > 0 and drafters[0].calls > 0
    # the command line: the config file, with the toy's setting overridden by its generated flag
    out = tmp_path / "metrics.json"
    rc = main(["generate", "--config", str(config_file), "--toy-repeat-times", "1", "--prompt", PROMPT,
               "--max-new-tokens", "16", "--metrics-json", str(out)])
    assert rc == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert got["tokens"] == want
    levels = got["metrics"]["levels"]
    assert levels[1]["kind"] == "statistical" and levels[1]["drafted"] > 0
    # one token per proposal, as the flag said: every proposal drafted at most one token
    assert levels[1]["drafted"] <= levels[1]["proposals"]
    assert main(["generate", "--config", str(config_file), "--toy-repeat-times", "0", "--prompt", PROMPT]) == 2
    assert "'times' must be >= 1" in capsys.readouterr().err


def test_bench_engine_executor(config_file):
    from csdrafting.bench.executors import EngineExecutor
    from csdrafting.bench.methods import build_methods
    from csdrafting.spec import CascadeSpec
    from csdrafting.text import encode

    spec = CascadeSpec.load(config_file)
    methods = build_methods(spec, ["plain", "csd"], calibrate=False)
    assert [m.name for m in methods] == ["plain", "csd"] and methods[1].drafters == (TOY,)
    ex = EngineExecutor.from_spec(spec, methods, progress=False)
    ids = encode(ex.target, PROMPT)
    plain = ex.run(methods[0], methods[0].resolve(), ids, 16, None)
    csd = ex.run(methods[1], methods[1].resolve(), ids, 16, plain.tokens)
    assert csd.tokens == plain.tokens and csd.metrics.levels[1].drafted > 0
    assert isinstance(ex.cascade(methods[1].resolve(), "csd").drafters[0], RepeatLast)


def test_served_request(config_file):
    from starlette.testclient import TestClient

    from csdrafting.serve import EngineWorker, create_app
    from csdrafting.spec import CascadeSpec, build
    from csdrafting.text import encode

    spec = CascadeSpec.load(config_file)
    target, drafters, config = build(spec, progress=False)
    want_ids = _plain(target, encode(target, PROMPT), 12)
    worker = EngineWorker(target, drafters, config, model_name="toy", describe=spec.to_json())
    with TestClient(create_app(worker)) as client:
        r = client.post("/v1/completions", json={"model": "toy", "prompt": PROMPT, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] == target.tokenizer.decode(want_ids, skip_special_tokens=True)
        levels = body["timings"]["levels"]
        assert levels[1]["kind"] == "statistical" and levels[1]["drafted"] > 0
        assert client.get("/v1/models").json()["data"][0]["cascade"]["drafter_settings"] == {TOY: {"times": 4}}
