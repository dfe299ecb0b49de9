"""How far an adapter moves the built-in model from a teacher (default: the shipped adapter), as
KL(teacher ‖ adapted) per token with an empty memory, on two kinds of text: held-out book text (1,024
tokens from the middle of each of `--books` books of `valid.jsonl.xz`) and the short-context check's
prompts (`chat`) followed by the teacher's own greedy answers, scored on the answers. `--adapter`
takes several, comma-separated; `none` (the plain base model) is the yardstick: the teacher's whole
change from it.
"""

from __future__ import annotations

import time

import torch

from lab.train.trainer import kl_per_token

from .chat import INSTRUCTIONS
from .common import DATA, Table, load_engine, read_jsonl, write_json


def add_arguments(p) -> None:
    p.add_argument("--teacher", default="auto", help="auto (the shipped adapter, default) or an adapter file")
    p.add_argument("--books", type=int, default=6, help="held-out books, 1,024 tokens of each (default 6)")


def book_pieces(tokenizer, books: int, n: int = 1024) -> list[list[int]]:
    out = []
    for i, b in enumerate(read_jsonl(DATA / "gutenberg" / "valid.jsonl.xz")):
        if i >= books:
            break
        t = b["text"]
        mid = len(t) // 2
        out.append(tokenizer.encode(t[mid : mid + 8 * n], add_special_tokens=False).ids[:n])
    return out


def answered_prompts(engine, prompts: list[str], max_new_tokens: int = 48) -> list[tuple[list[int], int]]:
    """Each prompt in the chat format followed by the engine's greedy answer: (ids, first answer index)."""
    out = []
    for prompt in prompts:
        answer = "".join(engine.generate(prompt, engine.new_memory(), max_new_tokens=max_new_tokens)).strip()
        p = engine.tokenizer.encode(engine.chat.render([{"role": "user", "content": prompt}], add_generation_prompt=True),
                                    add_special_tokens=False).ids
        out.append((p + engine.tokenizer.encode(answer, add_special_tokens=False).ids, len(p)))
    return out


def distance(teacher, model, books: list[list[int]], answered: list[tuple[list[int], int]]) -> dict[str, float]:
    """Mean KL(teacher ‖ model) per token over the book pieces, and over the answers' tokens."""
    with torch.no_grad():
        text = [kl_per_token(teacher, model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
                for ids in books]
        ans = []
        for ids, start in answered:
            scored = torch.zeros(1, len(ids), dtype=torch.bool)
            scored[0, start - 1 : len(ids) - 1] = True  # the positions that predict the answer's tokens
            ans.append(kl_per_token(teacher, model, torch.tensor([ids]), scored))
    return {"book_text": float(sum(text) / max(1, len(text))), "answers": float(sum(ans) / max(1, len(ans)))}


def run(args) -> dict:
    t0 = time.perf_counter()
    teacher = load_engine(args.model, args.device, adapter=args.teacher)
    L = teacher.config.segment_length  # each piece is read as one segment
    books = book_pieces(teacher.tokenizer, args.books, min(1024, L))
    answered = [(ids[:L], start) for ids, start in answered_prompts(teacher, [q for q, _ in INSTRUCTIONS])
                if start < L]
    rows, items = [], {}
    for name in args.adapter.split(","):
        e = load_engine(args.model, args.device, adapter=name)
        items[name] = distance(teacher.model, e.model, books, answered)
        rows.append([f"{name} ({e.fingerprint[:8]})", f"{items[name]['book_text']:.3f}", f"{items[name]['answers']:.3f}"])
        print(rows[-1], flush=True)
    label = "the shipped adapter" if args.teacher == "auto" else teacher.source
    table = Table(f"KL({label} ‖ model) per token, empty memory: {len(books)} held-out books "
                  f"({len(books[0]) if books else 0:,} tokens each) and the check's {len(answered)} prompts with the teacher's answers",
                  ["model", "book text", "the check's answers"], rows)
    result = {"eval": "distance", "items": items, "tables": [table], "args": vars(args) | {"func": None},
              "seconds": time.perf_counter() - t0}
    write_json(args.out, result)
    return result
