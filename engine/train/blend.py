"""`python -m engine.train.blend A B --t T [--gates G] --out FILE`: an adapter whose merged weights
are T·ΔW_A + (1 − T)·ΔW_B exactly (the factors side by side, rank r_A + r_B) and whose gates are
G·β_A + (1 − G)·β_B: a point between two runs from the same base (WiSE-FT-style weight
interpolation), to trade one run's ability for the other's without training. `--layers LO-HI` blends
only those layers' factors; the others take B's (the gates follow G everywhere)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..adapter import ADAPTER_FORMAT, AdapterError, read_adapter


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.train.blend", description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--t", type=float, required=True, help="A's share of the weights' change")
    p.add_argument("--gates", type=float, default=1.0, help="A's share of the gates (default 1: A's gates)")
    p.add_argument("--layers", metavar="LO-HI", help="blend only these layers' factors (the others: B's)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    layers = tuple(int(x) for x in args.layers.split("-")) if args.layers else None
    meta = blend(args.a, args.b, args.t, args.gates, args.out, layers)
    print(f"{args.out}: rank {meta['rank']}, {args.t:g} of {args.a}, {1 - args.t:g} of {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
