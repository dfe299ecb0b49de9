"""`python -m lab.train.blend A B --t T [--gates G] --out FILE`: an adapter whose merged weights
are T·ΔW_A + (1 − T)·ΔW_B exactly (the factors side by side, rank r_A + r_B) and whose gates are
G·β_A + (1 − G)·β_B: a point between two runs from the same base (WiSE-FT-style weight
interpolation), to trade one run's ability for the other's without training. `--layers LO-HI` blends
only those layers' factors; the others take B's (the gates follow G everywhere).

`python -m lab.train.blend A B --graft --out FILE`: A's weights wherever the local attention
computes, B's wherever the memory does: A's factors merged as before, B's gates, and memory
projections (model.py, `MemoryProjection`) equal to ΔW_B − ΔW_A for q, k, v and o (rank r_A + r_B),
so the memory path reads and writes exactly as B's model and an empty memory answers as A's."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from infini_reader.engine.adapter import ADAPTER_FORMAT, AdapterError, read_adapter


def blend(a: str | Path, b: str | Path, t: float, gates: float, out: str | Path,
          layers: tuple[int, int] | None = None) -> dict:
    ma, ta = read_adapter(a)
    mb, tb = read_adapter(b)
    if (ma["layers"], ma["hidden_size"]) != (mb["layers"], mb["hidden_size"]) or set(ta) != set(tb):
        raise AdapterError(f"{a} and {b} are not adapters of the same model and projections")
    sa, sb = ma["alpha"] / ma["rank"], mb["alpha"] / mb["rank"]
    rank = ma["rank"] + mb["rank"]
    blended = {}
    for name in ta:
        if name.endswith(".lora_A"):
            blended[name] = torch.cat([ta[name], tb[name]], 0)
        elif name.endswith(".lora_B"):  # scale 1 (alpha = rank): each side carries its own scale and weight
            w = t
            if layers is not None and not layers[0] <= int(re.search(r"layers\.(\d+)\.", name).group(1)) <= layers[1]:
                w = 0.0
            blended[name] = torch.cat([w * sa * ta[name], (1 - w) * sb * tb[name]], 1)
        else:
            blended[name] = gates * ta[name] + (1 - gates) * tb[name]
    meta = {**ma, "rank": rank, "alpha": float(rank), "blend": {"a": str(a), "b": str(b), "t": t, "gates": gates,
                                                               "layers": list(layers) if layers else None}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in blended.items()}, str(out),
              metadata={ADAPTER_FORMAT: json.dumps(meta, sort_keys=True)})
    return meta


def graft(a: str | Path, b: str | Path, out: str | Path) -> dict:
    ma, ta = read_adapter(a)
    mb, tb = read_adapter(b)
    if (ma["layers"], ma["hidden_size"]) != (mb["layers"], mb["hidden_size"]):
        raise AdapterError(f"{a} and {b} are not adapters of the same model")
    if any(".memory_proj." in n for n in (*ta, *tb)):
        raise AdapterError("graft takes two adapters without memory projections")
    sa, sb = ma["alpha"] / ma["rank"], mb["alpha"] / mb["rank"]
    ra, rb = ma["rank"], mb["rank"]
    out_t = {n: t for n, t in ta.items() if ".lora_" in n}
    out_t |= {n: t for n, t in tb.items() if n.endswith("memory_gate")}
    for i in range(ma["layers"]):
        for short, proj in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            base = f"model.layers.{i}.self_attn.{proj}"
            pre = f"model.layers.{i}.self_attn.memory_proj.{short}"
            parts_a, parts_b = [], []  # (A (r, in), B (out, r) with its scale and sign)
            if base + ".lora_A" in tb:
                parts_a.append(tb[base + ".lora_A"])
                parts_b.append(sb * tb[base + ".lora_B"])
            if base + ".lora_A" in ta:
                parts_a.append(ta[base + ".lora_A"])
                parts_b.append(-sa * ta[base + ".lora_B"])
            if not parts_a:
                raise AdapterError(f"neither adapter changes {base}")
            A = torch.cat(parts_a, 0)
            out_t[pre + "_A"] = torch.cat([A, A.new_zeros(ra + rb - A.shape[0], A.shape[1])], 0)
            Bm = torch.cat(parts_b, 1)
            out_t[pre + "_B"] = torch.cat([Bm, Bm.new_zeros(Bm.shape[0], ra + rb - Bm.shape[1])], 1)
    meta = {**ma, "memory_rank": ra + rb, "memory_alpha": float(ra + rb), "graft": {"local": str(a), "memory": str(b)}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in out_t.items()}, str(out),
              metadata={ADAPTER_FORMAT: json.dumps(meta, sort_keys=True)})
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.train.blend", description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--t", type=float, help="A's share of the weights' change")
    p.add_argument("--graft", action="store_true", help="A's weights for the local attention, B's for the memory")
    p.add_argument("--gates", type=float, default=1.0, help="A's share of the gates (default 1: A's gates)")
    p.add_argument("--layers", metavar="LO-HI", help="blend only these layers' factors (the others: B's)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.graft:
        meta = graft(args.a, args.b, args.out)
        print(f"{args.out}: {args.a} where the local attention computes, {args.b} where the memory does "
              f"(memory projections of rank {meta['memory_rank']})")
        return 0
    if args.t is None:
        p.error("--t is required (or --graft)")
    layers = tuple(int(x) for x in args.layers.split("-")) if args.layers else None
    meta = blend(args.a, args.b, args.t, args.gates, args.out, layers)
    print(f"{args.out}: rank {meta['rank']}, {args.t:g} of {args.a}, {1 - args.t:g} of {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
