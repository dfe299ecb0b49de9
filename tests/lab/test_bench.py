"""The benchmark runs end to end on a tiny model and prints well-formed tables (no timings asserted)."""

from infini_reader.engine import InfiniConfig
from lab.bench import DT, Options, ingest_flops, kv_cache_bytes, profile, run

from .conftest import tiny_config


def _table(md: str, title_start: str) -> tuple[list[str], list[list[str]]]:
    lines = md.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("### " + title_start))
    rows = []
    for ln in lines[i + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows[0], rows[2:]  # header, (separator), body


def _number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%").rstrip("K"))


def test_bench_quick_on_a_tiny_model():
    cfg = tiny_config(segment_length=32)
    opts = Options(lengths=(96,), cfg=cfg, quick=True, log=lambda s: None)  # one subprocess: ~3 s when quiet
    md = run(opts, command="python -m lab.bench --quick")
    assert "python -m lab.bench --quick" in md

    header, rows = _table(md, "Matmul rates")
    assert header == ["measure", "TFLOP/s", f"of {DT} peak"]
    assert len(rows) == 3 and all(_number(r[1]) > 0 for r in rows)

    header, rows = _table(md, "Ingest speed, random model")
    for col in ("tokens", "tokens/s", "GFLOP/token", "TFLOP/s", "MFU"):
        assert col in header
    assert [r[0] for r in rows] == ["96"]
    for row in rows:
        assert len(row) == len(header)
        assert all(_number(v) > 0 for v in row if v != "0%"), row  # CPU pressure may be 0 on a quiet machine

    header, rows = _table(md, "Ingest memory")
    for col in ("RSS loaded (MiB)", "peak RSS during run (MiB)", "peak while loading (MiB)", "snapshot (KiB)",
                f"full KV cache {DT} (MiB)", "KV cache / snapshot"):
        assert col in header
    assert [r[0] for r in rows] == ["96"]
    for row in rows:
        values = dict(zip(header, row))
        for col in header:
            if col != "growth (MiB)":  # may be about 0 (or below) on a tiny model
                assert _number(values[col]) > 0, (col, values[col])
    assert "### How these tables are measured" in md


def test_kv_cache_and_flop_counts():
    cfg = InfiniConfig()
    assert kv_cache_bytes(cfg, 131072) == 30 * 2 * 3 * 64 * 131072 * 2
    # one segment from an empty memory: no read; every layer but the last does the full work
    c = tiny_config(num_hidden_layers=2, segment_length=4)
    C, I, H, Hkv, D, T = 48, 80, 6, 2, 8, 4
    proj = 2 * T * (C * H * D + 2 * C * Hkv * D + H * D * C + 3 * C * I)
    update = 2 * T * Hkv * D * D + T * Hkv * D
    first = proj + 4 * H * D * (T * (T + 1) // 2) + update + (2 * T * 2 * C * Hkv * D + update)
    assert ingest_flops(c, T) == first
    # the second segment adds the memory read in the full layers
    assert ingest_flops(c, 2 * T) == 2 * first + 2 * T * H * D * (D + 1)


def test_profile_breakdown_on_a_tiny_model():
    md = profile(2, cfg=tiny_config(segment_length=32))
    header, rows = _table(md, "Where the time of an ingest goes")
    assert header[:3] == ["part", "seconds", "share"]
    parts = {r[0]: r for r in rows}
    for part in ("local attention", "MLP matmuls (gate, up, down)", "q, k, v, o projections", "RMSNorm",
                 "memory update (fp32)", "memory read (fp32)", "total (wall)"):
        assert part in parts
    assert all(_number(r[1]) >= 0 for r in rows)
    assert abs(sum(_number(r[2]) for r in rows if r[0] != "total (wall)") - 100) < 1  # shares add up


def test_adapters_side_by_side_on_a_tiny_model(tmp_path):
    """An adapter with memory projections, measured beside the model without it: one row each, the
    base's ratio exactly 1, the adapter's a positive ratio."""
    import torch

    from infini_reader.engine import build_model
    from infini_reader.engine.adapter import add_memory_projection, save_adapter

    cfg = tiny_config(segment_length=32)
    model = build_model(cfg, seed=0)
    add_memory_projection(model, rank=2, alpha=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_proj.q_B.normal_(0, 0.1)
    save_adapter(model, tmp_path / "a" / "adapter.safetensors")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_proj.q_B.mul_(2)
    save_adapter(model, tmp_path / "b" / "adapter.safetensors")
    files = (str(tmp_path / "a" / "adapter.safetensors"), str(tmp_path / "b" / "adapter.safetensors"))
    opts = Options(lengths=(96,), cfg=cfg, quick=True, sections=("adapters",), adapters=files,
                   adapter_base="random", repeats=1, log=lambda s: None)
    md = run(opts, command="python -m lab.bench --sections adapters")
    header, rows = _table(md, "Adapters side by side on the random model")
    assert header[:5] == ["adapter", "weights", "tokens", "tokens/s", "vs base"]
    assert [r[0] for r in rows] == ["no adapter", *files]  # files of one name: named by their paths
    base, *others = (dict(zip(header, r)) for r in rows)
    assert all(r["tokens"] == "96" for r in [base, *others])
    # each adapter was applied, each its own: the projections change the weights' fingerprint
    assert len({r["weights"] for r in [base, *others]}) == 3
    assert _number(base["vs base"]) == 1 and _number(base["vs base (best segment)"]) == 1
    assert all(_number(r["vs base"]) > 0 and _number(r["tokens/s"]) > 0 for r in others)
    assert "decode tokens/s" not in header  # the random model has no tokenizer to answer with


def test_llama_peer_is_skipped_with_a_note_when_llama_cpp_is_missing(monkeypatch):
    import inspect

    import lab.bench as bench

    monkeypatch.setattr(bench, "llama_python", lambda: None)
    (table,) = bench.llama_section(Options(peer_lengths=(96,), threads=2, log=lambda s: None))
    md = table.markdown()
    assert "llama.cpp side by side" in md and "llama.cpp skipped" in md and "llama-venv" in md
    # the child is sent as source to another interpreter: it must stand alone
    compile(inspect.getsource(bench._llama_child), "llama_child", "exec")
