"""Perplexity on held-out books (`valid.jsonl.xz`) per segment index, with the memory on, with it
shut (every gate closed: the same weights reading each segment alone) and empty (the same weights
and gates, each segment read with a fresh memory, as the first segment always is), so the memory's
gain shows as the book goes on. Once training has opened the gates, "shut" also changes how much
each head's local attention weighs, which the model was not trained for; "empty" changes only what
the memory holds. Each book is read from `--skip` of its length on (past the front matter).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from engine.model import add_delta

from .common import DATA, Table, add_segment_length, base_engine, load_engine, read_jsonl, write_json


def add_arguments(p) -> None:
    p.add_argument("--books", type=int, default=5, help="held-out books (default 5)")
    p.add_argument("--segments", type=int, default=12, help="segments read per book (default 12)")
    p.add_argument("--skip", type=float, default=0.1, help="start this far into each book (default 0.1)")
    p.add_argument("--data", default=str(DATA / "gutenberg" / "valid.jsonl.xz"))
    add_segment_length(p)


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


def run(args) -> dict:
    e = load_engine(args.model, args.device, adapter=args.adapter, segment_length=args.segment_length)
    shut = base_engine(e, window=e.config.segment_length)
    L = e.config.segment_length
    t0 = time.perf_counter()
    need = args.segments * L + 1
    on = [[0.0, 0] for _ in range(args.segments)]
    off = [[0.0, 0] for _ in range(args.segments)]
    empty = [[0.0, 0] for _ in range(args.segments)]
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
        for acc, per_segment in ((on, with_memory), (off, segment_nll(shut, ids, memory=False)[1]), (empty, alone)):
            for i, (nll, n) in enumerate(per_segment):
                acc[i][0] += nll
                acc[i][1] += n
        books.append(b["title"])
        print(f"{b['title'][:50]}: done", flush=True)
    rows, per = [], []
    ppl = lambda acc: math.exp(sum(a for a, _ in acc) / max(1, sum(n for _, n in acc)))
    gain = lambda ref, p: f"{100 * (ref - p) / ref:+.1f}%"
    for i in range(args.segments):
        p_on, p_off, p_empty = ppl(on[i : i + 1]), ppl(off[i : i + 1]), ppl(empty[i : i + 1])
        per.append({"segment": i + 1, "ppl_memory": p_on, "ppl_shut": p_off, "ppl_empty": p_empty})
        rows.append([i + 1, f"{p_on:.2f}", f"{p_off:.2f}", gain(p_off, p_on), f"{p_empty:.2f}", gain(p_empty, p_on)])
    late = slice(3, args.segments)
    t_on, t_off, t_empty = ppl(on[late]), ppl(off[late]), ppl(empty[late])
    rows.append([f"4–{args.segments}", f"{t_on:.2f}", f"{t_off:.2f}", gain(t_off, t_on), f"{t_empty:.2f}",
                 gain(t_empty, t_on)])
    table = Table(f"Perplexity per segment of {L} tokens, {len(books)} held-out books ({e.source})",
                  ["segment", "memory on", "memory shut", "gain", "memory empty", "gain"], rows)
    result = {"eval": "ppl", "model": e.source, "fingerprint": e.fingerprint, "books": books, "per_segment": per,
              "args": vars(args) | {"func": None}, "tables": [table], "seconds": time.perf_counter() - t0}
    write_json(args.out, result)
    return result
