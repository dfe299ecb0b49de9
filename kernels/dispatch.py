"""Which implementation runs: the Triton kernels or the PyTorch references.

    INFINI_KERNELS=auto       (default) Triton for CUDA tensors when triton imports, PyTorch otherwise
    INFINI_KERNELS=reference  always the PyTorch reference
    INFINI_KERNELS=triton     always Triton, CPU tensors included (then TRITON_INTERPRET=1 must be
                              set before the first kernel call: Triton's interpreter, as the tests do)

The variable is read at every call, so a test can switch it. Under `auto`, a kernel that Triton
cannot build or launch on this machine (a compiler error, a GPU with too little shared memory: any
`triton.errors.TritonError`) is reported once in the log and its calls take the PyTorch reference
for the rest of the process (`kernel_failures()` says which and why); `triton` keeps the error.

The public names differ from the folders' (`segment_attention` runs `infini_attention/`,
`write_memory` runs `memory_update/`, `decode_token` runs `decode/`): a function named like a
subpackage would hide it as an attribute of `kernels`. Nothing here imports triton at module
import time: `import engine` on a machine without a GPU never loads it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch

from .decode import naive as decode_naive
from .infini_attention import naive as attention_naive
from .memory_update import naive as update_naive

MODES = ("auto", "reference", "triton")
log = logging.getLogger(__name__)
_FAILED: dict[str, str] = {}  # kernel family -> why Triton failed it here (auto mode then takes the reference)


def mode() -> str:
    m = os.environ.get("INFINI_KERNELS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"INFINI_KERNELS={m!r}: expected one of {', '.join(MODES)}")
    return m


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install failing on import
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    """True where the fused kernels run for tensors like x."""
    m = mode()
    if m == "reference":
        return False
    if m == "triton":
        if not triton_available():
            raise RuntimeError("INFINI_KERNELS=triton, but triton does not import")
        return True
    return x.is_cuda and triton_available()


def head_dim_supported(head_dim: int) -> bool:
    """The kernels take head dims that are powers of two from 32 (tl.dot needs D/2 >= 16) to 256."""
    return 32 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


def fused_applies(x: torch.Tensor, head_dim: int) -> bool:
    """The engine's question: does a layer with this head dim, on tensors like x, run fused?
    Where the kernels do not take the head dim, the engine keeps its own PyTorch path (forcing
    INFINI_KERNELS=triton then is an error)."""
    if not use_triton(x):
        return False
    if head_dim_supported(head_dim):
        return True
    if mode() == "triton":
        raise ValueError(f"INFINI_KERNELS=triton, but the kernels do not take head dim {head_dim}")
    return False


def kernel_failures() -> dict[str, str]:
    """The kernel families ("segment", "memory write", "decode") that Triton failed on this machine in
    this process, with the error; under INFINI_KERNELS=auto they run the PyTorch reference."""
    return dict(_FAILED)


def _is_triton_error(e: BaseException) -> bool:
    try:
        from triton.errors import TritonError
    except ImportError:  # an older triton: its errors live in triton.compiler / triton.runtime
        return type(e).__module__.startswith("triton.")
    return isinstance(e, TritonError)


def _fused_or_reference(family: str, fused: Callable, reference: Callable):
    if family in _FAILED and mode() == "auto":
        return reference()
    try:
        return fused()
    except Exception as e:
        if mode() != "auto" or not _is_triton_error(e):
            raise
        why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
        _FAILED[family] = why
        log.warning("Triton kernel (%s) failed on this machine, the PyTorch path runs instead: %s", family, why)
        return reference()


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def segment_attention(
    q: torch.Tensor,
    k_r: torch.Tensor,
    v: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    beta: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos0: int = 0,
) -> torch.Tensor:
    """The mixed attention output of one chunk, A = sigmoid(β)·A_mem + (1 − sigmoid(β))·A_dot.

    q (B, H, T, D) before rotary; k_r (B, Hkv, >= pos0+T, D) rotated and v (B, Hkv, >= pos0+T, D)
    (the segment's keys and values so far, this chunk's included); M (B, Hkv, D, D), z (B, Hkv, D)
    float32 or None (empty memory); beta (H,); cos/sin (T, D) for positions pos0 .. pos0+T-1.
    Returns (B, H, T, D) in q's dtype; differentiable. One token after a cache (T == 1, no
    gradient) takes the decode kernel.
    """
    def reference():
        return attention_naive.infini_attention(q, k_r, v, M, z, beta, cos, sin, pos0)

    if not use_triton(q):
        return reference()
    if _needs_grad(q, k_r, v, M, z, beta):
        from .infini_attention.fused_backward import InfiniAttentionFunction

        return _fused_or_reference(
            "segment", lambda: InfiniAttentionFunction.apply(q, k_r, v, M, z, beta, cos, sin, pos0), reference)
    if q.shape[2] == 1 and pos0 > 0:
        from .decode.fused import decode_fwd

        return _fused_or_reference("decode", lambda: decode_fwd(q, k_r, v, M, z, beta, cos, sin, pos0), reference)
    from .infini_attention.fused import infini_attention_fwd

    return _fused_or_reference(
        "segment", lambda: infini_attention_fwd(q, k_r, v, M, z, beta, cos, sin, pos0), reference)


def write_memory(
    k: torch.Tensor, v: torch.Tensor, M: torch.Tensor | None, z: torch.Tensor | None, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dM, dz) float32 that a segment (or chunk) adds to the memory; k (B, Hkv, T, D) *before*
    rotary (σ is applied here), v (B, Hkv, T, D). Differentiable."""
    def reference():
        return update_naive.memory_update(k, v, M, z, rule)

    if not use_triton(k):
        return reference()
    if _needs_grad(k, v, M, z):
        from .memory_update.fused import MemoryUpdateFunction

        return _fused_or_reference("memory write", lambda: MemoryUpdateFunction.apply(k, v, M, z, rule), reference)
    from .memory_update.fused import memory_update_fwd

    return _fused_or_reference("memory write", lambda: memory_update_fwd(k, v, M, z, rule), reference)


def decode_token(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    beta: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: int,
) -> torch.Tensor:
    """One token at position pos against the segment's cache (its own key/value already at pos):
    (B, H, 1, D). Inference only (no gradient)."""
    def reference():
        return decode_naive.decode(q, k_cache, v_cache, M, z, beta, cos, sin, pos)

    if not use_triton(q):
        return reference()
    from .decode.fused import decode_fwd

    return _fused_or_reference("decode", lambda: decode_fwd(q, k_cache, v_cache, M, z, beta, cos, sin, pos), reference)
