"""`python -m lab.train.probe recall|open`: two measurements behind the training recipe.

recall  Can the memory carry a fact from one segment to the next at all, and how fast does gradient
        descent learn to use it from a given starting gate β0? A tiny Infini-Transformer trained from
        scratch (every parameter) on a task only the memory can solve: a marker and a random digit
        somewhere in segment 1, filler, then the marker again at the end of segment 2, and the digit
        is scored. Fresh random keys at every step, so nothing can be memorised. Chance is ln 10.
open    What opening the gates costs the converted built-in model before any training: its loss on
        held-out book text (`valid.jsonl.xz`) with every β at the given values, the memory on,
        several segments per sequence.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
from .unroll import forward_train

KEY, ASK = 30, 31  # the tiny task's marker tokens; digits are 0..9, filler 10..29


def recall_batch(rng: random.Random, n: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences of two segments of L tokens: (ids, targets), only the last token scored."""
    ids, targets = [], []
    for _ in range(n):
        d, at = rng.randrange(10), rng.randrange(L - 1)
        seg1 = [rng.randrange(10, 30) for _ in range(L)]
        seg1[at : at + 2] = [KEY, d]
        seq = seg1 + [rng.randrange(10, 30) for _ in range(L - 2)] + [ASK, d]
        ids.append(seq[:-1])
        targets.append([-100] * (2 * L - 2) + [d])
    return torch.tensor(ids), torch.tensor(targets)


def train_recall(gate: float, steps: int, L: int = 16, rule: str = "linear", frozen_gate: bool = False,
                 seed: int = 0, every: int = 0) -> list[tuple[int, float]]:
    """Train a tiny model from scratch on the recall task; (step, held-out loss) every `every` steps
    and at the end."""
    from infini_reader.engine.config import InfiniConfig
    from infini_reader.engine.engine import build_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg = InfiniConfig(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, intermediate_size=128, segment_length=L,
                       rope_theta=10000.0, tie_word_embeddings=False, memory_update=rule, memory_gate_init=gate)
    model = build_model(cfg, seed=seed).train()
    params = [p for n, p in model.named_parameters() if not (frozen_gate and n.endswith("memory_gate"))]
    opt = torch.optim.AdamW(params, lr=3e-3)
    held_out = recall_batch(random.Random(seed + 1), 256, L)
    out = []
    for step in range(1, steps + 1):
        forward_train(model, *recall_batch(rng, 32, L), grad_checkpoint=False).backward()
        opt.step()
        opt.zero_grad()
        if step == steps or (every and step % every == 0):
            with torch.no_grad():
                out.append((step, float(forward_train(model, *held_out))))
    return out


def _markdown(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.train.probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("recall")
    r.add_argument("--gates", default="0,-1,-2,-3,-6", help="starting β values")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--every", type=int, default=50)
    r.add_argument("--segment-length", type=int, default=16)
    r.add_argument("--rule", choices=["linear", "delta"], default="linear")
    o = sub.add_parser("open")
    o.add_argument("--gates", default="-6,-3,-2,-1,0")
    o.add_argument("--books", type=int, default=2)
    o.add_argument("--segment-length", type=int, default=512)
    o.add_argument("--segments", type=int, default=3)
    args = p.parse_args(argv)
    if args.what == "recall":  # a tiny model: one thread is fastest
        torch.set_num_threads(1)
    gates = [float(g) for g in args.gates.split(",")]
    t0 = time.perf_counter()
    if args.what == "recall":
        rows = []
        for g in gates:
            curve = train_recall(g, args.steps, args.segment_length, args.rule, every=args.every)
            rows.append([f"{g:g}"] + [f"{loss:.3f}" for _, loss in curve])
            print(f"β0 = {g:g}: " + ", ".join(f"{s}: {loss:.3f}" for s, loss in curve), flush=True)
        print(f"\nHeld-out recall loss (chance {math.log(10):.3f}) by step, tiny model trained from scratch, "
              f"segments of {args.segment_length}, {args.rule} memory ({time.perf_counter() - t0:.0f} s)\n")
        steps = [s for s, _ in curve]
        print(_markdown(["β0"] + [f"step {s}" for s in steps], rows))
        return 0
    from infini_reader.app.core.models import load_model
    from .data import read_jsonl
    from .trainer import SHARED_DATA

    e = load_model("builtin", device="cpu", adapter=None, segment_length=args.segment_length)
    n = args.segment_length * args.segments + 1
    ids = []
    for b in read_jsonl(SHARED_DATA / "gutenberg" / "valid.jsonl.xz", args.books):
        t = b["text"][len(b["text"]) // 3 :]
        ids.append(e.tokenizer.encode(t[: n * 8], add_special_tokens=False).ids[:n])
    x = torch.tensor(ids)
    rows, base = [], None
    for g in gates:
        with torch.no_grad():
            for layer in e.model.model.layers:
                layer.self_attn.memory_gate.fill_(g)
            loss = float(forward_train(e.model, x[:, :-1], x[:, 1:], grad_checkpoint=False))
        base = loss if base is None else base
        rows.append([f"{g:g}", f"{100 / (1 + math.exp(-g)):.1f}%", f"{loss:.4f}", f"×{math.exp(loss - base):.3f}"])
    print(f"\nBuilt-in model, plain (no adapter), every β set alike: loss on {args.books} held-out books × "
          f"{args.segments} segments of {args.segment_length} tokens ({time.perf_counter() - t0:.0f} s)\n")
    print(_markdown(["β", "memory weight", "loss", f"perplexity vs β = {gates[0]:g}"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
