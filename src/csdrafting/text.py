"""Text in and out for either backend's tokenizer (the engine itself only sees token ids)."""

from __future__ import annotations

from typing import Sequence

from .protocol import CSDraftingError


def tokenizer_of(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise CSDraftingError(f"{model.info.label} has no tokenizer; pass token ids instead of text")
    return tok


def encode(model, text: str) -> list[int]:
    """Token ids of `text`, special tokens written as text (<|im_start|>) parsed, no BOS added."""
    tok = tokenizer_of(model)
    if hasattr(tok, "apply_chat_template") and hasattr(tok, "stream_decoder"):  # llama.cpp tokenizer
        return tok.encode(text, add_special=False)
    return list(tok.encode(text, add_special_tokens=False))


def chat_prompt(model, user_text: str) -> str:
    """`user_text` as one user turn in the model's chat template, ready for the assistant's answer."""
    return render_chat(model, [{"role": "user", "content": user_text}])


def render_chat(model, messages: list[dict]) -> str:
    """A conversation ({"role", "content"} dicts) in the model's chat template, ready for the assistant."""
    tok = tokenizer_of(model)
    if hasattr(tok, "stream_decoder"):
        return tok.apply_chat_template(messages, add_generation_prompt=True)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class StreamText:
    """Feed it token batches; it returns the new text, never splitting a UTF-8 character."""

    def __init__(self, model, skip_special: bool = True) -> None:
        self.tok = tokenizer_of(model)
        self.skip = skip_special
        self.tokens: list[int] = []
        self.shown = 0
        self.native = self.tok.stream_decoder(skip_special) if hasattr(self.tok, "stream_decoder") else None

    def push(self, tokens: Sequence[int]) -> str:
        if self.native is not None:
            return self.native.push(tokens)
        self.tokens += tokens
        text = self.tok.decode(self.tokens, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):  # an incomplete character: wait for the next token
            return ""
        new, self.shown = text[self.shown :], len(text)
        return new

    def flush(self) -> str:
        """What a native stream decoder still holds at the end of a generation (else nothing)."""
        return self.native.flush() if self.native is not None and hasattr(self.native, "flush") else ""
