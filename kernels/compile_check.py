"""Compile every Triton kernel for a GPU that is not here: `python -m kernels.compile_check`.

The tests run the kernels through Triton's interpreter on the CPU, which forgives what the compiler
refuses (a plain Python float read as a global inside a kernel, say: the first real GPU this project
met, an H200 with Triton 3.6, stopped there). This module calls the public wrappers with small CPU
tensors while launching nothing: each launch is recorded, then compiled by Triton's own compiler
and `ptxas` (both in the triton wheel) for the target, sm_90 (Hopper) unless `--arch` says
otherwise. No GPU and no driver are needed. With `--all-configs` every autotune configuration
compiles, not only the first of each kernel.

It must run without TRITON_INTERPRET (the interpreter replaces the kernels by Python functions),
so the tests start it in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

# the most shared memory one block may use (opt-in), by compute capability ×10
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
          torch.int64: "i64"}


@dataclass
class Launch:
    kernel: object  # the triton.runtime.autotuner.Autotuner
    args: tuple
    kwargs: dict
    where: str  # which call of the wrappers launched it


def record_launches() -> list[Launch]:
    """Call every wrapper on CPU tensors of the built-in model's shapes (bf16 and float32, memory
    empty and full, forward and backward, prompt and decode) with launches recorded, not run."""
    import triton.runtime.autotuner as autotuner

    from .decode import fused as decode
    from .infini_attention import fused as attention
    from .infini_attention import fused_backward as backward
    from .memory_update import fused as update

    launches: list[Launch] = []
    where = [""]

    def run(self, *args, grid=None, warmup=False, **kwargs):
        launches.append(Launch(self, args, kwargs, where[0]))

    saved_run = autotuner.Autotuner.run
    saved_checks = {m: m.check_device for m in (decode, attention, update)}
    autotuner.Autotuner.run = run
    for m in saved_checks:
        m.check_device = lambda *tensors: None  # CPU tensors stand for the GPU's
    try:
        B, H, Hkv, T, D, pos0 = 1, 9, 3, 64, 64, 64
        for dtype in (torch.bfloat16, torch.float32):
            q = torch.randn(B, H, T, D, dtype=dtype)
            k_r = torch.randn(B, Hkv, pos0 + T, D, dtype=dtype)
            v = torch.randn(B, Hkv, pos0 + T, D, dtype=dtype)
            M, z = torch.randn(B, Hkv, D, D), torch.rand(B, Hkv, D)
            beta = torch.zeros(H, dtype=dtype)
            cos, sin = torch.randn(T, D, dtype=dtype), torch.randn(T, D, dtype=dtype)
            for mem in ((None, None), (M, z)):
                for store_dot in (False, True):
                    where[0] = f"segment {dtype}, memory {'full' if mem[0] is not None else 'empty'}, dot {store_dot}"
                    attention.infini_attention_fwd(q, k_r, v, *mem, beta, cos, sin, pos0, store_dot=store_dot)
                where[0] = f"decode {dtype}, memory {'full' if mem[0] is not None else 'empty'}"
                decode.decode_fwd(q[:, :, :1], k_r, v, *mem, beta, cos[:1], sin[:1], pos0)
                for rule in ("linear", "delta"):
                    where[0] = f"memory write {dtype}, {rule}, memory {'full' if mem[0] is not None else 'empty'}"
                    update.memory_update_fwd(k_r[:, :, :T], v[:, :, :T], *mem, rule)
            where[0] = f"segment backward {dtype}"
            lse, delta = torch.randn(B, H, T), torch.randn(B, H, T)
            gdot = torch.rand(H)
            backward.local_backward(q, k_r, v, torch.randn(B, H, T, D, dtype=dtype), lse, delta, gdot, pos0)
    finally:
        autotuner.Autotuner.run = saved_run
        for m, check in saved_checks.items():
            m.check_device = check
    return launches


def signature(launch: Launch, config) -> tuple[dict, dict]:
    """Triton's (signature, constexprs) for a recorded launch under one autotune configuration."""
    fn = launch.kernel.fn
    values = dict(zip(fn.arg_names, launch.args))
    values.update(launch.kwargs)
    values.update(config.kwargs)
    sig, constexprs = {}, {}
    for p in fn.params:
        if p.name not in values:
            raise ValueError(f"{fn.__name__}: no value for {p.name}")
        x = values[p.name]
        if p.is_constexpr:
            sig[p.name], constexprs[p.name] = "constexpr", x
        elif isinstance(x, torch.Tensor):
            sig[p.name] = "*" + DTYPES[x.dtype]
        elif isinstance(x, bool):
            sig[p.name] = "i1"
        elif isinstance(x, int):
            sig[p.name] = "i32" if -(2**31) <= x < 2**31 else "i64"
        elif isinstance(x, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} is a {type(x).__name__}")
    return sig, constexprs


def compile_all(arch: int = 90, all_configs: bool = False, log=print, only: set[str] | None = None) -> list[str]:
    """Compile each distinct (kernel, signature, constexprs) for sm_<arch>, of the kernels named in
    `only` (default: all); returns the failures."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    failures, seen = [], set()
    for launch in record_launches():
        if only is not None and launch.kernel.fn.__name__ not in only:
            continue
        configs = launch.kernel.configs if all_configs else launch.kernel.configs[:1]
        for config in configs:
            sig, constexprs = signature(launch, config)
            key = (launch.kernel.fn.__name__, tuple(sig.items()), tuple(sorted(map(str, constexprs.items()))),
                   config.num_warps, config.num_stages)
            if key in seen:
                continue
            seen.add(key)
            name = f"{launch.kernel.fn.__name__} [{launch.where}; {config}]"
            t0 = time.perf_counter()
            try:
                src = ASTSource(fn=launch.kernel.fn, signature=sig, constexprs=constexprs)
                compiled = triton.compile(src, target=target,
                                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})
                shared = compiled.metadata.shared
                if shared > SHARED_LIMIT.get(arch, SHARED_LIMIT[90]):
                    raise RuntimeError(f"{shared:,} bytes of shared memory, more than sm_{arch} gives a block")
                log(f"ok    {name}: {len(compiled.asm['cubin']):,} bytes of cubin, {shared:,} of shared memory, "
                    f"{time.perf_counter() - t0:.1f} s")
            except Exception as e:  # noqa: BLE001 - every failure is reported, the others still compile
                first = str(e).strip().splitlines()
                failures.append(f"{name}: {type(e).__name__}: {first[-1] if first else ''}")
                log(f"FAIL  {name}: {type(e).__name__}: {e}")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability ×10 (default 90: H100/H200)")
    p.add_argument("--all-configs", action="store_true", help="every autotune configuration, not the first")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    failures = compile_all(args.arch, args.all_configs)
    print(f"{len(failures)} failed" if failures else "every kernel compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
