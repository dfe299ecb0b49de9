"""kernels.dispatch: which implementation runs, and that importing it never imports triton."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infini_reader import kernels
from infini_reader.kernels.decode import naive as decode_naive
from infini_reader.kernels.infini_attention import naive as attention_naive
from infini_reader.kernels.memory_update import naive as update_naive

from .conftest import BOUNDS, DEVICE, randn, random_memory, rel_err, rotary

ROOT = Path(__file__).resolve().parents[2]


def test_importing_engine_and_kernels_does_not_import_triton():
    env = {k: v for k, v in os.environ.items() if k not in ("INFINI_KERNELS", "TRITON_INTERPRET")}
    code = "import sys, infini_reader.engine, infini_reader.kernels; print('triton' in sys.modules)"
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


def _broken_segment_kernel(monkeypatch, error):
    """The segment kernel failing as Triton fails on a GPU it cannot build for; the calls counted."""
    from infini_reader.kernels import dispatch
    from infini_reader.kernels.infini_attention import fused

    tries = []

    def broken(*args, **kwargs):
        tries.append(1)
        raise error

    monkeypatch.setattr(dispatch, "_FAILED", {})
    monkeypatch.setattr(dispatch, "use_triton", lambda x: True)  # what auto answers for CUDA tensors
    monkeypatch.setattr(fused, "infini_attention_fwd", broken)
    return tries


def test_a_kernel_triton_cannot_build_falls_back_to_the_reference_under_auto(monkeypatch, caplog):
    from triton.runtime.errors import OutOfResources

    tries = _broken_segment_kernel(monkeypatch, OutOfResources(262144, 232448, "shared memory"))
    monkeypatch.setenv("INFINI_KERNELS", "auto")
    q, k, v, M, z, beta, cos, sin = _inputs(0, T=24)
    ref = attention_naive.infini_attention(q, k, v, M, z, beta, cos, sin, 0)
    with caplog.at_level(logging.WARNING, logger="infini_reader.kernels.dispatch"):
        first = kernels.segment_attention(q, k, v, M, z, beta, cos, sin)
        second = kernels.segment_attention(q, k, v, M, z, beta, cos, sin)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert len(tries) == 1  # after the failure the reference runs at once
    assert list(kernels.kernel_failures()) == ["segment"]
    assert "OutOfResources" in kernels.kernel_failures()["segment"]
    assert sum("failed on this machine" in r.getMessage() for r in caplog.records) == 1
    # the other kernels still run fused (here: the interpreter)
    dM, dz = kernels.write_memory(k, v, M, z, "delta")
    dM_ref, dz_ref = update_naive.memory_update(k, v, M, z, "delta")
    assert rel_err(dM, dM_ref) < BOUNDS[torch.float32] and rel_err(dz, dz_ref) < BOUNDS[torch.float32]
    assert "memory write" not in kernels.kernel_failures()


def test_forced_triton_and_errors_of_other_kinds_are_raised(monkeypatch):
    from triton.runtime.errors import OutOfResources

    q, k, v, M, z, beta, cos, sin = _inputs(0, T=8)
    _broken_segment_kernel(monkeypatch, OutOfResources(262144, 232448, "shared memory"))
    monkeypatch.setenv("INFINI_KERNELS", "triton")
    with pytest.raises(OutOfResources):
        kernels.segment_attention(q, k, v, M, z, beta, cos, sin)
    _broken_segment_kernel(monkeypatch, ValueError("a bug of ours, not the GPU's"))
    monkeypatch.setenv("INFINI_KERNELS", "auto")
    with pytest.raises(ValueError, match="bug of ours"):
        kernels.segment_attention(q, k, v, M, z, beta, cos, sin)
    assert kernels.kernel_failures() == {}
