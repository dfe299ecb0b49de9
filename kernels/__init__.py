"""Triton kernels for Infini-attention on the GPU, each beside the plain-PyTorch reference it is
tested against (DESIGN.md sections 1, 3 and 8).

    infini_attention/  fused segment forward (local causal attention with rotary, memory read,
                       gate mix) and its backward
    memory_update/     a segment's write into the memory, linear and delta rules
    decode/            one generated token against the segment's cache plus the memory read

The engine calls the functions below; they pick Triton or PyTorch (see `dispatch`). Kernels never
import the engine, and importing this package does not import triton.
"""

from .dispatch import decode_token, fused_applies, kernel_failures, mode, segment_attention, use_triton, write_memory

__all__ = ["decode_token", "fused_applies", "kernel_failures", "mode", "segment_attention", "use_triton", "write_memory"]
