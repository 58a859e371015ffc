"""The bench's prompts as token ids: cached for resume, grouped, and the later turns of a conversation.

Spec-Bench's MT-Bench questions (in `specbench` and `specbench-mt_bench`) run both their turns, the second
after the method's own first answer; the older `mtbench` set keeps its first turn only, comparable with
published first-turn figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from .. import datasets as ds_mod
from ..files import atomic_write
from .runner import CALIBRATION, EVAL, PromptIds
from .turns import Render


def runs_conversations(dataset: str) -> bool:
    """Whether the bench runs every user turn of this set's items (Spec-Bench), not the first alone."""
    return dataset == "specbench" or dataset.startswith("specbench-")


def prepare_prompts(out: Path, datasets: list[str], limit: int, cal: int, tokenizer_model) -> tuple[list[PromptIds], list[int]]:
    """Prompt token ids (of the first turn), cached in prompts.json so a resumed run feeds every method the
    same ids; each with its group and the user turns it runs.

    `tokenizer_model` is called (loading the target) only when some prompt is not cached yet.
    """
    from ..text import chat_prompt, encode

    path = out / "prompts.json"
    cache = json.loads(path.read_text()) if path.exists() else {"eos": None, "prompts": []}
    have = {(p["phase"], p["dataset"], p["id"]): p for p in cache["prompts"]}
    model = None
    result: list[PromptIds] = []
    for phase, n in ((CALIBRATION, cal), (EVAL, limit)):
        if n <= 0:
            continue
        for ds in datasets:
            # the split membership and order depend only on ids, never on the chat format
            items = ds_mod.load(ds, lambda u: u, limit=n, split=phase)
            for it in items:
                key = (phase, ds, it.id)
                if key not in have:
                    if model is None:
                        model = tokenizer_model()
                    text = it.text if it.messages is None else chat_prompt(model, it.messages[0][1])
                    have[key] = {"phase": phase, "dataset": ds, "id": it.id, "category": it.category,
                                 "ids": encode(model, text)}
                p = have[key]
                # group and turns come from the set itself (older caches lack them; they need no tokenizer)
                turns = tuple(it.turns) if runs_conversations(ds) else tuple(it.turns[:1])
                p.setdefault("group", it.group or ds)
                p.setdefault("turns", list(turns))
                result.append(PromptIds(phase, ds, p["id"], tuple(p["ids"]), p.get("category", ""), it.group or ds,
                                        turns))
    if model is not None:
        cache["eos"] = sorted(model.info.eos_token_ids)
        cache["tokenizer"] = model.info.label
        cache["prompts"] = list(have.values())
        atomic_write(path, json.dumps(cache) + "\n")
    return result, cache["eos"] or []


def chat_render(tokenizer_model: Callable[[], object]) -> Render:
    """Turn k+1's ids: the chat template over the user turns so far, each followed by the method's own
    answer decoded to text (its end-of-turn token dropped: the template writes its own), tokenized as the
    first turn was. The model is asked for only when a later turn is first needed."""
    from ..datasets import conversation
    from ..text import encode, render_chat

    box: list = []

    def render(prompt: PromptIds, answers: Sequence[Sequence[int]]) -> list[int]:
        if not box:
            box.append(tokenizer_model())
        model = box[0]
        eos = model.info.eos_token_ids
        texts = []
        for a in answers:
            a = list(a)
            while a and a[-1] in eos:
                a.pop()
            texts.append(_decode(model, a))
        return encode(model, render_chat(model, conversation(prompt.turns, texts, f"{prompt.dataset}/{prompt.id}")))

    return render


def _decode(model, ids: list[int]) -> str:
    tok = model.tokenizer
    if hasattr(tok, "stream_decoder"):  # llama.cpp's tokenizer
        return tok.decode(ids)
    return tok.decode(ids, skip_special_tokens=False)


def context_needed(prompts: Sequence[PromptIds], max_new: int) -> int:
    """Tokens a generation may hold: the longest first turn plus its answer, and for a conversation every
    later turn too (a character per token at most, and room for the template's markers)."""
    need = 0
    for p in prompts:
        later = sum(len(t) + 64 for t in p.turns[1:])
        need = max(need, len(p.ids) + later + max_new * max(1, len(p.turns)))
    return need + 64
