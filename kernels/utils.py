"""What every Triton kernel file here shares: interpreter detection, autotune lists, dot precision.

Imported only by the Triton files (which import triton); the dispatch and the references never
import it, so `import engine` on a machine without a GPU never imports triton.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on the CPU through Triton's interpreter (tests, CI).

    Triton reads the variable when a kernel is decorated, i.e. when its module is imported; it has
    to be set before that.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The interpreter cannot benchmark (there is no driver), and every kernel call would tune anew:
# it runs one small configuration; blocks of 32 still leave ragged tails on the test lengths.
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}


def autotune_configs(configs: list[triton.Config], interpreter: dict | None = None) -> list[triton.Config]:
    if interpreting():
        return [triton.Config(interpreter or INTERPRETER_CONFIG, num_warps=4, num_stages=1)]
    return configs


def length_bucket(n: int) -> int:
    """Autotune key for a length: the next power of two, so that every chunk length of a prompt
    does not trigger its own tuning run."""
    return triton.next_power_of_2(max(int(n), 1))


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision for products of the *inputs*: float32 inputs get full float32 products
    (the reference's), 16-bit inputs run on the tensor cores anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


# The memory read multiplies σ(q) (float32) by M (float32). With 16-bit activations it runs in TF32
# (10-bit mantissa, finer than the bfloat16 output it feeds); with float32 activations in full float32.
memory_read_precision = dot_precision

# Writing the memory is a sum over a whole segment into float32 state that lives for the whole
# book: always full float32 products (it is a small fraction of the work).
MEMORY_WRITE_PRECISION = "ieee"


# Triton 3.9's interpreter multiplies bfloat16 operands of tl.dot as their raw uint16 bits (its
# numpy storage of bfloat16). Widening them to float32 first gives what a GPU's bf16 tensor cores
# compute (exact products, float32 sums). Compiled kernels never take this branch.
_WIDEN_DOT = tl.constexpr(interpreting())


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """tl.dot(a, b, acc) at precision PREC; every kernel here multiplies through it."""
    if _WIDEN_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc=acc, input_precision=PREC)


@triton.jit
def sigma(x):
    """σ(x) = ELU(x) + 1 in float32; exp only of the non-positive part (no inf in the unused branch)."""
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))


def check_device(*tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    if any(t.device != dev for t in tensors if t is not None):
        raise ValueError("all tensors must be on the same device")
    if dev.type != "cuda" and not interpreting():
        raise RuntimeError(
            "Triton kernels on CPU tensors need TRITON_INTERPRET=1, set before the kernel modules are "
            "imported (or INFINI_KERNELS=reference for the PyTorch path)"
        )
