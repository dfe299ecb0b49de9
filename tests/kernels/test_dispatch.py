"""kernels.dispatch: which implementation runs, and that importing it never imports triton."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels.decode import naive as decode_naive
from kernels.infini_attention import naive as attention_naive
from kernels.memory_update import naive as update_naive

from .conftest import BOUNDS, DEVICE, randn, random_memory, rel_err, rotary

ROOT = Path(__file__).resolve().parents[2]


def test_importing_engine_and_kernels_does_not_import_triton():
    env = {k: v for k, v in os.environ.items() if k not in ("INFINI_KERNELS", "TRITON_INTERPRET")}
    code = "import sys, engine, kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_modes(monkeypatch):
    x = torch.zeros(1, device=DEVICE)
    monkeypatch.setenv("INFINI_KERNELS", "reference")
    assert kernels.mode() == "reference" and not kernels.use_triton(x)
    monkeypatch.setenv("INFINI_KERNELS", "triton")
    assert kernels.use_triton(x)
    monkeypatch.setenv("INFINI_KERNELS", "auto")
    assert kernels.use_triton(x) == (DEVICE == "cuda")
    monkeypatch.delenv("INFINI_KERNELS")
    assert kernels.mode() == "auto"
    monkeypatch.setenv("INFINI_KERNELS", "fast")
    with pytest.raises(ValueError, match="INFINI_KERNELS"):
        kernels.mode()


def test_fused_applies_only_to_head_dims_the_kernels_take(monkeypatch):
    x = torch.zeros(1, device=DEVICE)
    monkeypatch.setenv("INFINI_KERNELS", "auto")
    assert not kernels.fused_applies(x, 8) and not kernels.fused_applies(x, 80)
    assert kernels.fused_applies(x, 64) == (DEVICE == "cuda")
    monkeypatch.setenv("INFINI_KERNELS", "triton")
    assert kernels.fused_applies(x, 64) and kernels.fused_applies(x, 128)
    with pytest.raises(ValueError, match="head dim 8"):
        kernels.fused_applies(x, 8)
    monkeypatch.setenv("INFINI_KERNELS", "reference")
    assert not kernels.fused_applies(x, 64)


def _inputs(seed, T=50, pos0=0, H=6, Hkv=2, D=64):
    gen = torch.Generator().manual_seed(seed)
    q = randn(gen, 1, H, T, D)
    k, v = randn(gen, 1, Hkv, pos0 + T, D), randn(gen, 1, Hkv, pos0 + T, D)
    M, z = random_memory(gen, 1, Hkv, D)
    beta = randn(gen, H)
    cos, sin = rotary(T, D, pos0)
    return q, k, v, M, z, beta, cos, sin


def test_forced_paths_agree(seed, monkeypatch):
    """INFINI_KERNELS=triton runs the kernels (on the CPU: the interpreter), =reference the PyTorch
    code; both give the same numbers, for the segment, the decode step and the memory write."""
    q, k, v, M, z, beta, cos, sin = _inputs(seed)
    results = {}
    for m in ("triton", "reference"):
        monkeypatch.setenv("INFINI_KERNELS", m)
        results[m] = (
            kernels.segment_attention(q, k, v, M, z, beta, cos, sin),
            kernels.decode_token(q[:, :, -1:], k, v, M, z, beta, cos[-1:], sin[-1:], q.shape[2] - 1),
            kernels.segment_attention(q[:, :, -1:], k, v, M, z, beta, cos[-1:], sin[-1:], q.shape[2] - 1),
            *kernels.write_memory(k, v, M, z, "delta"),
        )
    for got, ref in zip(results["triton"], results["reference"]):
        assert rel_err(got, ref) < BOUNDS[torch.float32], f"seed {seed}"


def test_reference_mode_calls_the_references(monkeypatch):
    calls = []
    for mod, name in ((attention_naive, "infini_attention"), (update_naive, "memory_update"), (decode_naive, "decode")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **kw: calls.append(_n))
    monkeypatch.setenv("INFINI_KERNELS", "reference")
    q, k, v, M, z, beta, cos, sin = _inputs(0, T=4)
    kernels.segment_attention(q, k, v, M, z, beta, cos, sin)
    kernels.write_memory(k, v, M, z, "linear")
    kernels.decode_token(q[:, :, -1:], k, v, M, z, beta, cos[-1:], sin[-1:], 3)
    assert calls == ["infini_attention", "memory_update", "decode"]


def test_gradients_flow_through_the_dispatch(seed, monkeypatch):
    monkeypatch.setenv("INFINI_KERNELS", "triton")
    q, k, v, M, z, beta, cos, sin = _inputs(seed, T=40)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, M, z, beta)]
    a = kernels.segment_attention(*leaves, cos, sin)
    dM, dz = kernels.write_memory(leaves[1], leaves[2], leaves[3], leaves[4], "delta")
    (a.square().sum() + dM.square().sum() * 1e-4 + dz.sum()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)
