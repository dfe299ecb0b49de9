"""One token's products at the built-in model's shapes: float32 beside PyTorch's quantized CPU kernels.

    python -m lab.bench_quant [--threads 2]

Rows: the vocabulary head and the MLP's products, one row of activations (a decoded token). Columns:
float32; weight-only int4 from Q4_1-style blocks of 32 (`_weight_int4pack_mm_for_cpu`, exact: a Q4_1
weight d·q + m is scale d and zero m + 8d around q − 8); weight-only int8 per channel
(`_weight_int8pack_mm`); fbgemm's dynamic int8 (`quantize_dynamic`). Each cell is float32's time over
the kernel's (above 1: faster), best of 5 alternated rounds of 20 calls; the relative error of each
kernel's output against float32 follows. docs/performance.md, "Quantized matmuls tried for decoding".
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn as nn

SHAPES = {"vocabulary head": (49152, 576), "MLP up": (1536, 576), "MLP down": (576, 1536)}
GROUP = 32


def best_seconds(fns: dict, rounds: int = 5, calls: int = 20) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best


@torch.inference_mode()
def row(n: int, k: int) -> tuple[dict[str, float], dict[str, float]]:
    q4 = torch.randint(0, 16, (n, k), dtype=torch.int32)
    d = (torch.rand(n, k // GROUP) * 0.01 + 0.001).half().float()
    m = (torch.randn(n, k // GROUP) * 0.01).half().float()
    w = d.repeat_interleave(GROUP, 1) * q4 + m.repeat_interleave(GROUP, 1)  # what a Q4_1 block de-quantizes to
    x = torch.randn(1, k)
    packed4 = torch._convert_weight_to_int4pack_for_cpu(q4, 2)
    scales_zeros = torch.stack([d.t(), (m + 8 * d).t()], dim=-1).contiguous()  # (k / GROUP, n, 2)
    s8 = w.abs().amax(1) / 127
    w8 = torch.round(w / s8[:, None]).to(torch.int8)
    lin = nn.Linear(k, n, bias=False)
    lin.weight.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantization is deprecated in favour of torchao
        dyn = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
    fns = {
        "float32": lambda: x @ w.t(),
        "int4 (GGUF blocks)": lambda: torch._weight_int4pack_mm_for_cpu(x, packed4, GROUP, scales_zeros),
        "int8 weight-only": lambda: torch._weight_int8pack_mm(x, w8, s8),
        "fbgemm dynamic int8": lambda: dyn(x),
    }
    ref = fns["float32"]()
    err = {name: float((fn() - ref).abs().max() / ref.abs().max()) for name, fn in fns.items()}
    return best_seconds(fns), err


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab.bench_quant", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    header = ["product (rows × cols)", "float32", "int4 (GGUF blocks)", "int8 weight-only", "fbgemm dynamic int8"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, (n, k) in SHAPES.items():
        secs, err = row(n, k)
        cells = [f"{secs['float32'] / secs[c]:.2f}× (err {err[c]:.1e})" for c in header[2:]]
        print(f"| {name} {n:,} × {k:,} | 1 ({secs['float32'] * 1e3:.2f} ms) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
