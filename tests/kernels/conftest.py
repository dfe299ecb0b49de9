"""Kernel tests: the Triton kernels against their PyTorch references (DESIGN.md section 8).

Without a GPU the kernels run on the CPU in Triton's interpreter. Triton decides between compiling
and interpreting when a kernel module is imported, so TRITON_INTERPRET is set here, before any
test module of this folder imports a kernel (nothing earlier in the session imports one: the
engine reaches the kernels only through `kernels.dispatch`, which imports them lazily and only for
CUDA tensors or INFINI_KERNELS=triton). With a GPU the same tests run the compiled kernels.

Inputs are random with a fresh seed per test and per session (KERNEL_TEST_SEED=n repeats one);
every failure message names its seed. Outputs are written into NaN-filled buffers, so a row or
column a kernel forgets to write fails the test.
"""

import os
import random
import sys
import zlib

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
    early = [m for m in sys.modules if m.startswith("infini_reader.kernels.") and m.endswith(("fused", "fused_backward"))]
    if early:
        raise RuntimeError(f"{early} imported before tests/kernels/conftest.py set TRITON_INTERPRET=1")

SESSION_SEED = int(os.environ.get("KERNEL_TEST_SEED", random.SystemRandom().randrange(2**31)))

# Error bounds: max |kernel − reference| / max |reference| over a whole output or gradient, the
# reference computed in float32 from the same (possibly bfloat16) inputs. float32 kernels differ by
# summation order only. bfloat16 ones feed the tensor cores bfloat16: the rotated queries and the
# probabilities are rounded before their products, and the output is rounded. Worst measured over
# 12 seeds of every case (200 for decode), interpreter: forward 5e-7 / 7.6e-3 (float32 / bfloat16),
# decode 8e-7 / 1.5e-2, memory write 5e-7 (float32 accumulation for both), gradients 1.5e-6 / 1.3e-2.
BOUNDS = {torch.float32: 2e-5, torch.bfloat16: 3e-2}
GRAD_BOUNDS = {torch.float32: 5e-5, torch.bfloat16: 4e-2}


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test (stable within a session for a given test id)."""
    return (SESSION_SEED ^ zlib.crc32(request.node.nodeid.encode())) & 0x7FFFFFFF


def randn(gen: torch.Generator, *shape, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def random_memory(gen: torch.Generator, B: int, Hkv: int, D: int, tokens: int = 500):
    """A memory as real segments leave it: M = Σ σ(k)ᵀ v and z = Σ σ(k) over a few hundred tokens."""
    k = torch.randn(B, Hkv, tokens, D, generator=gen)
    v = torch.randn(B, Hkv, tokens, D, generator=gen)
    sk = torch.nn.functional.elu(k) + 1
    return (sk.transpose(-1, -2) @ v).to(DEVICE), sk.sum(-2).to(DEVICE)


def rotary(T: int, D: int, pos0: int = 0, theta: float = 10000.0, dtype=torch.float32):
    """cos/sin (T, D) of positions pos0 .. pos0+T-1, half-split layout (as engine.model builds them)."""
    inv = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))
    f = torch.outer(torch.arange(pos0, pos0 + T).float(), inv)
    e = torch.cat((f, f), dim=-1)
    return e.cos().to(DEVICE, dtype), e.sin().to(DEVICE, dtype)


def poisoned(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    assert not out.isnan().any(), "NaN left in the output (an element never written, or 0/0)"
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
