"""Tiny randomly initialised models, built in-process (no downloads), for fast exactness tests.

They run in float64 so that batched verification and one-token decoding agree to ~1e-15, far below the
gaps between logits: a greedy mismatch in these tests is a bug, not rounding.
"""

from __future__ import annotations

import copy

import torch

from csdrafting.backends.hf import HFCausalLM, HFSeq2SeqLM

VOCAB = 96
EOS = 2


def causal(seed: int = 0, layers: int = 2, hidden: int = 64, vocab: int = VOCAB, eos: int = EOS, ctx: int = 512,
           dtype: torch.dtype = torch.float64):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx, eos_token_id=eos,
        bos_token_id=1, pad_token_id=0, initializer_range=0.5, tie_word_embeddings=False,
    )
    m = Qwen2ForCausalLM(cfg).to(dtype).eval()
    m.generation_config.eos_token_id = eos
    m.generation_config.pad_token_id = 0
    return m


def perturbed(model, scale: float, seed: int):
    """A drafter that agrees with `model` often but not always: its weights plus Gaussian noise."""
    torch.manual_seed(seed)
    d = copy.deepcopy(model)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(scale * p.std() * torch.randn_like(p))
    return d


def seq2seq(seed: int = 0, vocab: int = VOCAB, eos: int = EOS, d_model: int = 64, layers: int = 2):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=layers, num_decoder_layers=layers,
        num_heads=4, eos_token_id=eos, pad_token_id=0, decoder_start_token_id=0, initializer_factor=4.0,
        tie_word_embeddings=False,
    )
    m = T5ForConditionalGeneration(cfg).to(torch.float64).eval()
    m.generation_config.eos_token_id = eos
    m.generation_config.pad_token_id = 0
    m.generation_config.decoder_start_token_id = 0
    return m


def wrap(model, name: str):
    cls = HFSeq2SeqLM if model.config.is_encoder_decoder else HFCausalLM
    return cls(model, name=name)
