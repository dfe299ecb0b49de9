"""`python -m engine.train.distance ADAPTER [ADAPTER ...]`: how far each adapter moves the built-in
model from a teacher (default: the shipped adapter), as KL(teacher ‖ adapted) per token with an
empty memory, on two kinds of text: held-out book text (1,024 tokens from the middle of each of
`--books` books of `valid.jsonl.xz`) and the short-context check's prompts (`infini eval chat`)
followed by the teacher's own greedy answers, scored on the answers. `none` names the plain base
model, the yardstick: the teacher's whole change from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .data import read_jsonl
from .trainer import SHARED_DATA, kl_per_token, threads_from_env


def book_pieces(tokenizer, books: int, n: int = 1024, data: Path = SHARED_DATA) -> list[list[int]]:
    out = []
    for b in read_jsonl(Path(data) / "gutenberg" / "valid.jsonl.xz", books):
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
    with torch.no_grad():
        text = [kl_per_token(teacher, model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
                for ids in books]
        ans = []
        for ids, start in answered:
            scored = torch.zeros(1, len(ids), dtype=torch.bool)
            scored[0, start - 1 : len(ids) - 1] = True  # the positions that predict the answer's tokens
            ans.append(kl_per_token(teacher, model, torch.tensor([ids]), scored))
    return {"book_text": float(sum(text) / max(1, len(text))), "answers": float(sum(ans) / max(1, len(ans)))}


def main(argv: list[str] | None = None) -> int:
    from app.evals.chat import INSTRUCTIONS
    from engine import load_model

    p = argparse.ArgumentParser(prog="python -m engine.train.distance", description=__doc__.split("\n\n")[0])
    p.add_argument("adapters", nargs="+", help="adapter files, or none (the plain base model)")
    p.add_argument("--teacher", default="auto", help="auto (the shipped adapter) or an adapter file")
    p.add_argument("--books", type=int, default=6)
    p.add_argument("--out", help="write the figures here (JSON)")
    args = p.parse_args(argv)
    threads_from_env()
    teacher = load_model("builtin", device="cpu", adapter=args.teacher)
    books = book_pieces(teacher.tokenizer, args.books)
    answered = answered_prompts(teacher, [q for q, _ in INSTRUCTIONS])
    rows = {}
    print("| adapter | KL on book text | KL on the check's answers |\n| --- | --- | --- |")
    for name in args.adapters:
        model = load_model("builtin", device="cpu", adapter=None if name == "none" else name).model
        rows[name] = distance(teacher.model, model, books, answered)
        print(f"| {name} | {rows[name]['book_text']:.3f} | {rows[name]['answers']:.3f} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
