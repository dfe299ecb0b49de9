"""The compute dtype is chosen for the machine (DESIGN.md §8): bf16 only where the CPU has it in
hardware and it measures faster than float32 there, float32 elsewhere; INFINI_DTYPE overrides, and capping PyTorch or oneDNN at AVX2 forces the
float32 choice as well, so that the AVX2-only path can be tested on any machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infini_reader.engine import engine as eng

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend /proc/cpuinfo lists these flags."""

    def use(flags: str):
        text = f"processor\t: 0\nflags\t\t: {flags}\n"
        real = Path.read_text
        monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: text if str(p) == "/proc/cpuinfo" else real(p, *a, **k))

    for var in ("INFINI_DTYPE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(eng, "_BF16_CHOICE", {})  # each test measures (or reads its record) afresh
    return use


def test_no_bf16_flags_means_float32_without_measuring(cpu_with, tmp_path):
    for flags in ("fpu sse2 avx avx2 fma", "fpu avx2 fma avx512f avx512_vnni"):  # AVX-512 without bf16: emulated
        cpu_with(flags)
        assert eng.resolve_dtype("auto", CPU, tmp_path) == torch.float32
    assert not (tmp_path / "cpu-dtype.json").exists()  # nothing was probed


@pytest.mark.parametrize("flags", ["fpu avx2 fma avx512f avx512_bf16", "fpu avx2 fma amx_bf16 amx_tile"])
def test_bf16_flags_choose_by_the_measured_rate(cpu_with, tmp_path, flags):
    """With bf16 in the flags the choice is the probe's: its speedup is recorded per CPU, and the
    dtype follows it against the margin, in this process and (from the record) in later ones."""
    cpu_with(flags)
    dt = eng.resolve_dtype("auto", CPU, tmp_path)
    record = json.loads((tmp_path / "cpu-dtype.json").read_text())
    (speedup,) = [v["speedup"] for v in record.values()]
    assert speedup > 0
    assert dt == (torch.bfloat16 if speedup >= eng.BF16_MARGIN else torch.float32)
    # A later process reads the record instead of measuring: plant each answer in turn.
    key = next(iter(record))
    for planted, expected in ((3.0, torch.bfloat16), (0.6, torch.float32)):
        (tmp_path / "cpu-dtype.json").write_text(json.dumps({key: {"speedup": planted}}))
        eng._BF16_CHOICE.clear()
        assert eng.resolve_dtype("auto", CPU, tmp_path) == expected


def test_a_damaged_record_is_measured_again(cpu_with, tmp_path):
    cpu_with("fpu avx2 fma avx512f avx512_bf16")
    (tmp_path / "cpu-dtype.json").write_text("{not json")
    assert eng.resolve_dtype("auto", CPU, tmp_path) in (torch.bfloat16, torch.float32)
    assert all("speedup" in v for v in json.loads((tmp_path / "cpu-dtype.json").read_text()).values())


def test_the_probe_measures_a_rate_ratio():
    s = eng.probe_bf16_speedup(rows=64, cols=64, out=64, rounds=2)
    assert 0.001 < s < 1000


@pytest.mark.parametrize("var, value", [("ATEN_CPU_CAPABILITY", "avx2"), ("ATEN_CPU_CAPABILITY", "default"),
                                        ("ONEDNN_MAX_CPU_ISA", "AVX2")])
def test_capping_the_instruction_set_at_avx2_forces_float32(cpu_with, monkeypatch, var, value):
    cpu_with("fpu avx2 fma avx512f avx512_bf16 amx_bf16")
    monkeypatch.setenv(var, value)
    assert eng.resolve_dtype("auto", CPU) == torch.float32
    assert not eng._BF16_CHOICE  # nothing to measure: bf16 is ruled out by the flags
    assert not eng.cpu_has_fast_bf16()


def test_infini_dtype_overrides_the_choice(cpu_with, monkeypatch):
    cpu_with("fpu avx2 fma")
    monkeypatch.setenv("INFINI_DTYPE", "bfloat16")
    assert eng.resolve_dtype("auto", CPU) == torch.bfloat16
    monkeypatch.setenv("INFINI_DTYPE", "float32")
    cpu_with("fpu avx2 fma avx512_bf16")
    assert eng.resolve_dtype("auto", CPU) == torch.float32
    assert eng.resolve_dtype("bfloat16", CPU) == torch.bfloat16  # an explicit dtype wins over the variable
    monkeypatch.setenv("INFINI_DTYPE", "int3")
    with pytest.raises(ValueError, match="unknown dtype"):
        eng.resolve_dtype("auto", CPU)


def test_a_process_forced_to_avx2_reads_in_float32():
    """End to end in a fresh process, as CI's or a user's AVX2 machine would run: the engine picks
    float32 and reads a segment."""
    code = (
        "import torch\n"
        "from infini_reader import engine\n"
        "from infini_reader.engine.engine import resolve_dtype\n"
        "cfg = engine.InfiniConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,"
        " num_key_value_heads=2, head_dim=8, intermediate_size=64, segment_length=16)\n"
        "dt = resolve_dtype('auto', torch.device('cpu'))\n"
        "e = engine.Engine(engine.build_model(cfg, dtype=dt, seed=0))\n"
        "mem = e.ingest(list(range(40)), e.new_memory())\n"
        "print(dt, e.dtype, mem.tokens, torch.backends.cpu.get_cpu_capability())\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop("INFINI_DTYPE", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    dt, model_dt, tokens, capability = out.stdout.split()
    assert (dt, model_dt, tokens) == ("torch.float32", "torch.float32", "40")
    assert capability in ("AVX2", "DEFAULT")
