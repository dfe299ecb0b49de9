"""The kernels compile for a Hopper GPU (sm_90), checked here without one.

The other kernel tests run Triton's interpreter, which accepts what the compiler refuses: the first
real GPU (an H200, Triton 3.6) stopped on a plain float read as a global inside three kernels.
`python -m kernels.compile_check` records each launch of the wrappers and compiles it with Triton's
compiler and ptxas; it needs a process without TRITON_INTERPRET, which this folder's conftest sets.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ("_infini_attention_fwd", "_decode", "_memory_update", "_bwd_dkdv", "_bwd_dq")


def compiled(code: list[str], tmp_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if tmp_path is not None:  # a fresh cache: nothing compiled before can stand in
        env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    return subprocess.run([sys.executable, *code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_every_kernel_compiles_for_sm90():
    got = compiled(["-m", "infini_reader.kernels.compile_check"])
    assert got.returncode == 0, got.stdout[-4000:] + got.stderr[-4000:]
    ok = [line for line in got.stdout.splitlines() if line.startswith("ok ")]
    # five kernels; each in bf16 and float32; the forward with and without the memory and with and
    # without the local output kept for the backward, decode with and without the memory, the write
    # linear (empty memory) and delta (full): 4 + 2 + 2 + 1 + 1 = 10 per dtype
    assert len(ok) == 20, got.stdout
    for name in KERNELS:
        assert any(line.split()[1] == name for line in ok), name
    assert all("bytes of cubin" in line for line in ok)
    assert got.stdout.rstrip().endswith("every kernel compiled")


def test_a_plain_float_global_in_a_kernel_is_caught(tmp_path):
    code = ("import kernels.infini_attention.fused_backward as b; b.LOG2E = 1.4426950408889634; "
            "from kernels.compile_check import compile_all; "
            "f = compile_all(log=lambda s: None, only={'_bwd_dq'}); print(len(f)); print(*f, sep='\\n')")
    got = compiled(["-c", code], tmp_path)
    assert got.returncode == 0, got.stderr[-4000:]
    lines = got.stdout.splitlines()
    assert lines[0] == "2", got.stdout  # bf16 and float32
    assert all("_bwd_dq" in line and "CompilationError" in line for line in lines[1:3]), got.stdout
