"""Perplexity on held-out books (`valid.jsonl.xz`) per segment index, with the memory on, with it
shut (every gate closed: the same weights reading each segment alone) and empty (the same weights
and gates, each segment read with a fresh memory, as the first segment always is), so the memory's
gain shows as the book goes on. Once training has opened the gates, "shut" also changes how much
each head's local attention weighs, which the model was not trained for; "empty" changes only what
the memory holds. Each book is read from `--skip` of its length on (past the front matter).

`--full-context` adds what a perfect memory could give: the same weights, shut, reading each
segment with ordinary softmax attention over the tokens before it, as many as the base model's
native window holds (8,192 for SmolLM2: the segment and up to three before it). The gap between
"memory shut" and "full context" bounds the gain any memory of those earlier tokens can bring.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from infini_reader.engine.model import add_delta

from .common import BASE_WINDOW, DATA, Table, add_segment_length, base_engine, load_engine, read_jsonl, write_json


def add_arguments(p) -> None:
    p.add_argument("--books", type=int, default=5, help="held-out books (default 5)")
    p.add_argument("--segments", type=int, default=12, help="segments read per book (default 12)")
    p.add_argument("--skip", type=float, default=0.1, help="start this far into each book (default 0.1)")
    p.add_argument("--data", default=str(DATA / "gutenberg" / "valid.jsonl.xz"))
    add_segment_length(p)
    p.add_argument("--full-context", action="store_true",
                   help=f"also read each segment with full attention over the {BASE_WINDOW:,} tokens up to its end "
                        "(the bound on any memory's gain; slower)")


@torch.inference_mode()
def segment_nll(e, ids: torch.Tensor, memory: bool = True) -> tuple[list, list]:
    """(summed negative log-likelihood, tokens) per segment, twice: with the memory carried from
    segment to segment, and with every segment read alone (an empty memory). The first segment is
    the same in both and is computed once. `memory` False computes only the second list (the first
    is then empty)."""
    L = e.config.segment_length
    model, layers, on, alone = e.model, None, [], []

    def nll(h, chunk) -> tuple[float, int]:
        logits = model.lm_head(h[0]).float()
        return float(F.cross_entropy(logits, chunk[1:], reduction="sum")), chunk.numel() - 1

    for s in range(0, ids.numel() - 1, L):
        chunk = ids[s : s + L + 1]
        if memory:
            h, deltas = model.segment(chunk[None, :-1], layers)
            on.append(nll(h, chunk))
            layers = add_delta(layers, deltas)
        if memory and s == 0:  # nothing was written before the first segment: read alone, the same
            alone.append(on[-1])
        else:
            h, _ = model.segment(chunk[None, :-1], None)
            alone.append(nll(h, chunk))
    return on, alone


@torch.inference_mode()
def full_context_nll(e, ids: torch.Tensor, L: int) -> list:
    """(summed negative log-likelihood, tokens) per segment of L tokens, each read in one pass of
    softmax attention together with the tokens before it, as many as `e`'s segment holds."""
    W, out = e.config.segment_length, []
    for s in range(0, ids.numel() - 1, L):
        end = min(s + L, ids.numel() - 1)
        start = max(0, end - W)
        h, _ = e.model.segment(ids[None, start:end], None)
        logits = e.model.lm_head(h[0, s - start :]).float()
        out.append((float(F.cross_entropy(logits, ids[s + 1 : end + 1], reduction="sum")), end - s))
    return out


def run(args) -> dict:
    e = load_engine(args.model, args.device, adapter=args.adapter, segment_length=args.segment_length)
    shut = base_engine(e, window=e.config.segment_length)
    full = base_engine(e, window=max(BASE_WINDOW, e.config.segment_length)) if args.full_context else None
    L = e.config.segment_length
    t0 = time.perf_counter()
    need = args.segments * L + 1
    on = [[0.0, 0] for _ in range(args.segments)]
    off = [[0.0, 0] for _ in range(args.segments)]
    empty = [[0.0, 0] for _ in range(args.segments)]
    whole = [[0.0, 0] for _ in range(args.segments)]
    books = []
    for b in read_jsonl(args.data):
        if len(books) >= args.books:
            break
        text = b["text"][int(len(b["text"]) * args.skip) :]
        ids = e.tokenizer.encode(text[: need * 8], add_special_tokens=False).ids
        if len(ids) < need:
            continue
        ids = torch.tensor(ids[:need], device=e.device)
        with_memory, alone = segment_nll(e, ids)
        measured = [(on, with_memory), (off, segment_nll(shut, ids, memory=False)[1]), (empty, alone)]
        if full is not None:
            measured.append((whole, full_context_nll(full, ids, L)))
        for acc, per_segment in measured:
            for i, (nll, n) in enumerate(per_segment):
                acc[i][0] += nll
                acc[i][1] += n
        books.append(b["title"])
        print(f"{b['title'][:50]}: done", flush=True)
    rows, per = [], []
    ppl = lambda acc: math.exp(sum(a for a, _ in acc) / max(1, sum(n for _, n in acc)))
    gain = lambda ref, p: f"{100 * (ref - p) / ref:+.1f}%"

    def row(label, part: slice) -> list:
        p_on, p_off, p_empty = ppl(on[part]), ppl(off[part]), ppl(empty[part])
        r = [label, f"{p_on:.2f}", f"{p_off:.2f}", gain(p_off, p_on), f"{p_empty:.2f}", gain(p_empty, p_on)]
        if full is not None:
            p_full = ppl(whole[part])
            r += [f"{p_full:.2f}", gain(p_off, p_full)]
        return r

    for i in range(args.segments):
        one = slice(i, i + 1)
        per.append({"segment": i + 1, "ppl_memory": ppl(on[one]), "ppl_shut": ppl(off[one]), "ppl_empty": ppl(empty[one]),
                    **({"ppl_full_context": ppl(whole[one])} if full is not None else {})})
        rows.append(row(i + 1, one))
    if args.segments >= 4:  # after the first few segments: the figure the targets speak of (none before)
        rows.append(row(f"4–{args.segments}", slice(3, args.segments)))
    head = ["segment", "memory on", "memory shut", "gain", "memory empty", "gain"]
    if full is not None:
        head += [f"full context ({full.config.segment_length:,})", "gain"]
    table = Table(f"Perplexity per segment of {L} tokens, {len(books)} held-out books ({e.source})", head, rows)
    result = {"eval": "ppl", "model": e.source, "fingerprint": e.fingerprint, "books": books, "per_segment": per,
              "args": vars(args) | {"func": None}, "tables": [table], "seconds": time.perf_counter() - t0}
    write_json(args.out, result)
    return result
