"""Generation: a prompt on top of a memory, one token at a time, with a per-token callback.

The key/value cache holds the current segment only. When a segment fills up during the prompt or
the answer, what it adds to the memory is written exactly once and the cache restarts, so an answer
may run longer than a segment. Everything happens on a private copy of the memory: the caller's
(a saved book's) memory is never modified.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

from .model import InfiniTransformer, LayerMemory, SegmentCache, add_delta
from .quant import DECODE_ENV, Int8Decoder, resolve_decode

# Tokens after which making the int8 decoder (about 1 s) has paid for itself: it saves about 21 ms a
# token here (15 against 36 ms, docs/performance.md).
INT8_BREAK_EVEN = 48


class Stream:
    """The state of one generation: the memory so far plus the current segment's caches."""

    def __init__(self, model: InfiniTransformer, mem: list[LayerMemory] | None, fast=None):
        self.model = model
        self.mem = mem
        self.fast = fast  # an `engine.quant.Int8Decoder` for one-token steps and logits, or None (exact)
        self.caches = [SegmentCache() for _ in range(model.config.num_hidden_layers)]
        self.tokens = 0  # tokens fed through this stream

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Run 1-D token ids; return the float32 logits after the last one."""
        L = self.model.config.segment_length
        i, h = 0, None
        while i < ids.numel():
            chunk = ids[i : i + L - self.caches[0].pos]
            if chunk.numel() > 1:
                step = self.model.segment
                self._settle()  # rows kept by one-token steps of this segment are written first
            else:  # the same maths in fewer operations (int8 products with `fast`)
                step = self.fast.decode if self.fast is not None else self.model.decode
            h, deltas = step(chunk[None], self.mem, self.caches)
            if deltas is not None:  # the int8 step keeps its rows instead (written by `_settle`)
                for c, (dM, dz) in zip(self.caches, deltas):
                    c.accumulate(dM, dz)
            if self.caches[0].pos == L:  # the segment is full: write it into the memory, once
                self._commit()
            i += chunk.numel()
        self.tokens += ids.numel()
        if self.fast is not None:
            return self.fast.logits(h[0, -1])
        return self.model.lm_head(h[0, -1]).float()

    def _settle(self) -> None:
        if self.fast is not None:
            self.fast.settle(self.caches, self.mem)

    def _commit(self) -> None:
        self._settle()
        self.mem = add_delta(self.mem, [(c.dM, c.dz) for c in self.caches])
        for c in self.caches:
            c.restart()

    def final_memory(self) -> list[LayerMemory] | None:
        """The memory with the current partial segment written in too (the stream ends here)."""
        if self.caches[0].pos == 0:
            return self.mem
        self._settle()
        return add_delta(self.mem, [(c.dM, c.dz) for c in self.caches])


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty of Keskar et al. (2019), as transformers applies it: logits of tokens
    already in the answer are divided by `penalty` when positive, multiplied when negative. Small
    models otherwise loop on a phrase."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    vals = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        p, order = probs.sort(descending=True)
        keep = p.cumsum(-1) - p < top_p  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate_ids(
    model: InfiniTransformer,
    prompt: torch.Tensor,
    mem: list[LayerMemory] | None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_ids: frozenset[int] = frozenset(),
    generator: torch.Generator | None = None,
    on_end: Callable[[Stream], None] | None = None,
    repetition_penalty: float = 1.0,
    decode: str | None = None,
    int8: Callable[[], Int8Decoder] | None = None,
) -> Iterator[int]:
    """Yield new token ids after the prompt; a stop id ends generation and is not yielded.

    `decode`: "int8", "exact" or "auto"/None ($INFINI_DECODE, else int8 on a CPU that has the kernels):
    how the answer's tokens are decoded (engine/quant.py); the prompt is read exactly either way.
    `int8`: what gives the int8 decoder (`Engine.int8_decoder`; default: made from the model alone)."""
    fast = None
    if resolve_decode(decode, prompt.device) == "int8":
        # Chosen by default (auto), the int8 decoder is made only where it repays its making (about a
        # second, once per process): already made (the window makes it when the model is ready), or an
        # answer that may run past the break-even; a one-off short answer (`infini ask`) stays exact.
        chosen = (decode or os.environ.get(DECODE_ENV, "auto")).strip().lower() in ("", "auto")
        if not chosen or max_new_tokens >= INT8_BREAK_EVEN or Int8Decoder.current(model) is not None:
            fast = int8() if int8 is not None else Int8Decoder.for_model(model)
    stream = Stream(model, mem, fast)
    logits = stream.feed(prompt)
    answer: list[int] = []
    for _ in range(max_new_tokens):
        if repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(answer)), dtype=torch.long, device=logits.device)
            logits = penalize(logits, seen, repetition_penalty)
        tok = sample(logits, temperature, top_p, generator)
        if tok in stop_ids:
            break
        answer.append(tok)
        yield tok
        logits = stream.feed(prompt.new_tensor([tok]))
    if on_end is not None:
        on_end(stream)


def detokenize(ids: Iterator[int], decode: Callable[[list[int]], str], stop: list[str]) -> Iterator[str]:
    """Turn token ids into text pieces as they come.

    Byte-level tokens can split a character: text ending in U+FFFD waits for the next token. Text
    that could be the start of a stop string is held back until it is known not to be one.
    """
    out: list[int] = []
    sent = 0  # characters already yielded
    text = ""
    for tok in ids:
        out.append(tok)
        text = decode(out)
        if text.endswith("\ufffd"):
            continue
        for s in stop:
            at = text.find(s, max(0, sent - len(s)))
            if at != -1:
                if at > sent:
                    yield text[sent:at]
                return
        hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if len(text) - hold > sent:
            yield text[sent : len(text) - hold]
            sent = len(text) - hold
    if len(text) > sent and not text.endswith("\ufffd"):
        yield text[sent:]
