"""Benchmark of the Infini-attention kernels: `python -m lab.kernel_bench [--batch B] [--rule linear|delta]`.

For one layer and one segment, forward and forward+backward, three implementations side by side:

    sdpa      PyTorch's scaled_dot_product_attention alone: the local attention, no memory
    pytorch   the engine's PyTorch path: rotary, SDPA, memory read, gate mix, memory write
    triton    rotary of K (as the engine does it) + the fused segment kernel + the fused memory write

Shapes: the built-in model's (SmolLM2-135M: 9 query / 3 kv heads × 64) and a 1B-class model's
(32 query / 8 kv heads × 64, as Llama-3.2-1B; and 32 / 8 × 128), segment 2048, bfloat16.

FLOPs counted (useful work, not what a kernel happens to execute): causal attention
2·B·H·T²·D forward (half of the two T×T×D products), memory read 2·B·H·T·D², memory write
2·B·Hkv·T·D² (twice that for the delta rule); backward 2.5× the attention and 2× the rest.
GB/s: the minimal traffic (inputs read once, outputs written once; backward counted as twice the
forward's) over the time: a lower bound of the bandwidth actually used.

Without a CUDA device the Triton rows cannot run compiled; the PyTorch rows run on the CPU.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from infini_reader.kernels.infini_attention import naive
from infini_reader.kernels.memory_update import naive as update_naive


@dataclass
class Shape:
    name: str
    heads: int
    kv_heads: int
    head_dim: int
    length: int = 2048


SHAPES = [
    Shape("built-in (SmolLM2-135M)", 9, 3, 64),
    Shape("1B-class, 32×64", 32, 8, 64),
    Shape("1B-class, 32×128", 32, 8, 128),
]


def inputs(s: Shape, batch: int, device: str, dtype: torch.dtype, grad: bool):
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, D = batch, s.heads, s.kv_heads, s.length, s.head_dim

    def r(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device, dt).requires_grad_(grad)

    kk = torch.randn(B, Hkv, 4 * T, D, generator=g)
    sk = F.elu(kk) + 1
    M = (sk.transpose(-1, -2) @ torch.randn(B, Hkv, 4 * T, D, generator=g)).to(device).requires_grad_(grad)
    z = sk.sum(-2).to(device).requires_grad_(grad)
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    e = torch.outer(torch.arange(T).float(), inv).repeat(1, 2)
    cos, sin = e.cos().to(device, dtype), e.sin().to(device, dtype)
    return {
        "q": r(B, H, T, D), "k": r(B, Hkv, T, D), "v": r(B, Hkv, T, D), "M": M, "z": z,
        "beta": r(H, dt=torch.float32), "cos": cos, "sin": sin,
    }


def sdpa_only(x, rule):
    q_r = naive.apply_rotary(x["q"], x["cos"], x["sin"])
    k_r = naive.apply_rotary(x["k"], x["cos"], x["sin"])
    return (F.scaled_dot_product_attention(q_r, k_r, x["v"], is_causal=True, enable_gqa=True),)


def pytorch_path(x, rule):
    q, k, v, M, z, beta = x["q"], x["k"], x["v"], x["M"], x["z"], x["beta"]
    q_r = naive.apply_rotary(q, x["cos"], x["sin"])
    k_r = naive.apply_rotary(k, x["cos"], x["sin"])
    a_dot = F.scaled_dot_product_attention(q_r, k_r, v, is_causal=True, enable_gqa=True)
    gate = torch.sigmoid(beta.float()).view(1, -1, 1, 1)
    a = (gate * naive.memory_retrieve(naive.sigma(q.float()), M, z) + (1 - gate) * a_dot.float()).to(q.dtype)
    return (a, *update_naive.memory_update(k, v, M, z, rule))


def triton_path(x, rule):
    from infini_reader.kernels.infini_attention.fused import infini_attention_fwd
    from infini_reader.kernels.infini_attention.fused_backward import InfiniAttentionFunction
    from infini_reader.kernels.memory_update.fused import MemoryUpdateFunction, memory_update_fwd

    q, k, v, M, z, beta, cos, sin = (x[n] for n in ("q", "k", "v", "M", "z", "beta", "cos", "sin"))
    k_r = naive.apply_rotary(k, cos, sin)
    if q.requires_grad:
        a = InfiniAttentionFunction.apply(q, k_r, v, M, z, beta, cos, sin, 0)
        return (a, *MemoryUpdateFunction.apply(k, v, M, z, rule))
    return (infini_attention_fwd(q, k_r, v, M, z, beta, cos, sin), *memory_update_fwd(k, v, M, z, rule))


def flops(s: Shape, batch: int, rule: str, impl: str, backward: bool) -> float:
    B, H, Hkv, T, D = batch, s.heads, s.kv_heads, s.length, s.head_dim
    attn = 2 * B * H * T * T * D
    mem = 2 * B * H * T * D * D + (2 if rule == "delta" else 1) * 2 * B * Hkv * T * D * D
    if impl == "sdpa":
        mem = 0
    return attn + mem + ((2.5 * attn + 2 * mem) if backward else 0)


def traffic(s: Shape, batch: int, impl: str, backward: bool, elem: int) -> float:
    B, H, Hkv, T, D = batch, s.heads, s.kv_heads, s.length, s.head_dim
    act = (2 * B * H * T * D + 2 * B * Hkv * T * D) * elem  # q and the output, k and v
    mem = 0 if impl == "sdpa" else 2 * B * Hkv * D * (D + 1) * 4  # M, z read; dM, dz written
    return (act + mem) * (3 if backward else 1)


def timed(fn, device: str, reps: int) -> float:
    """Median milliseconds of fn()."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def run(shape: Shape, batch: int, rule: str, device: str, impls: list[str], reps: int) -> list[dict]:
    rows = []
    dtype = torch.bfloat16
    fns = {"sdpa": sdpa_only, "pytorch": pytorch_path, "triton": triton_path}
    for backward in (False, True):
        base = None
        for impl in impls:
            x = inputs(shape, batch, device, dtype, grad=backward)
            fn = fns[impl]
            if backward:
                outs = fn(x, rule)
                grads = [torch.randn_like(o) for o in outs]
                leaves = [t for t in x.values() if t.requires_grad]

                def step(fn=fn, x=x, grads=grads, leaves=leaves):
                    torch.autograd.grad(fn(x, rule), leaves, grads, allow_unused=True)
            else:

                def step(fn=fn, x=x):
                    with torch.inference_mode():
                        fn(x, rule)

            ms = timed(step, device, reps)
            if impl == "pytorch":
                base = ms
            fl = flops(shape, batch, rule, impl, backward)
            rows.append(dict(
                shape=shape.name, impl=impl, pass_="fwd+bwd" if backward else "fwd", ms=ms, tflops=fl / ms / 1e9,
                gbs=traffic(shape, batch, impl, backward, dtype.itemsize) / ms / 1e6, base=base,
            ))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rule", choices=("linear", "delta"), default="linear")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per row on the CPU")
    ap.add_argument("--shapes", default="0,1,2", help="indices into SHAPES, comma-separated")
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    impls = ["pytorch", "sdpa", "triton"]
    if device == "cpu":
        impls = ["pytorch", "sdpa"]
        print("No CUDA device: the Triton kernels run compiled only on a GPU (on the CPU they run in")
        print("Triton's interpreter, for tests). PyTorch rows only, on the CPU.\n")
    else:
        print(f"GPU: {torch.cuda.get_device_name()}\n")
    print(f"one layer, one segment of 2048 tokens, batch {args.batch}, bfloat16, memory rule {args.rule}\n")
    head = ("shape", 24, "<"), ("pass", 7, "<"), ("impl", 8, "<"), ("ms", 9, ">"), ("TFLOP/s", 8, ">"), ("GB/s", 8, ">")
    print("| " + " | ".join(f"{n:{a}{w}}" for n, w, a in head) + f" | {'× pytorch':>9} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 11}|")
    for i in args.shapes.split(","):
        for r in run(SHAPES[int(i)], args.batch, args.rule, device, impls, args.reps):
            speed = f"{r['base'] / r['ms']:.2f}" if r["base"] else ""
            print(
                f"| {r['shape']:<24} | {r['pass_']:<7} | {r['impl']:<8} | {r['ms']:9.2f} | {r['tflops']:8.3f} "
                f"| {r['gbs']:8.1f} | {speed:>9} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
