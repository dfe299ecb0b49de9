"""Speed and memory of the engine, printed as markdown tables.

    python -m engine.bench                                  # random SmolLM2-135M-shaped model, 8K/32K/128K
    python -m engine.bench --lengths 8192,32768 --out docs/bench.md
    python -m engine.bench --quick                          # a smoke run of a few seconds
    python -m engine.bench --profile 2                      # where the time of 2 segments goes

Every ingest runs in a fresh subprocess, so that `ru_maxrss` is the peak RSS of that length alone.
The bf16 matmul peak is measured in the same run, and model FLOPs utilisation (MFU) is the ingest's
useful FLOP/s over it: ratios measured side by side, since these machines are shared and noisy.

Sections (one function each, returning a `Table`): `random` (a random model of the default
`InfiniConfig` shape). Later: `builtin` (the real model: ingest, time to first token, decode) and
`peers` (transformers and infini-transformer-pytorch at equal lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import InfiniConfig

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
DEFAULT_LENGTHS = (8192, 32768, 131072)
QUICK_LENGTHS = (4096,)

# ---- tables ----


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---:" for _ in self.columns) + "|"]
        out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        if self.notes:
            out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


# ---- the machine ----


def machine() -> str:
    name = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), name)
        have = set(info.split())
        flags = ", ".join(f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in have)
    except OSError:
        pass
    return (f"{name}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; flags: {flags or 'unknown'}")


def matmul_tflops(m: int, k: int, n: int, dtype=torch.bfloat16, seconds: float = 1.0) -> float:
    """Best single (m, k) @ (k, n) product over `seconds` of repeats (at least 3), in TFLOP/s.

    The first products of a size are slow (kernel selection, threads waking, clocks rising), so
    this repeats for a while and keeps the best rather than averaging.
    """
    return Probe(m, k, n, dtype)(seconds)


class Probe:
    """A bf16 matmul kept ready to measure the machine's current rate between two segments: on a
    shared machine the rate moves by 2× within a minute, so MFU divides by the rate of the moment."""

    def __init__(self, m: int = 2048, k: int = 2048, n: int = 2048, dtype=torch.bfloat16):
        self.a, self.b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        self.out = torch.empty(m, n, dtype=dtype)
        self.flops = 2 * m * k * n

    def __call__(self, seconds: float = 0.1) -> float:
        best, reps, t_end = float("inf"), 0, time.perf_counter() + seconds
        while reps < 3 or time.perf_counter() < t_end:
            t = time.perf_counter()
            torch.matmul(self.a, self.b, out=self.out)
            best = min(best, time.perf_counter() - t)
            reps += 1
        return self.flops / best / 1e12


def matmul_peak(dtype=torch.bfloat16, quick: bool = False) -> float:
    """This machine's matmul peak: the best square product over a few sizes."""
    sizes = (2048,) if quick else (2048, 4096, 8192)
    return max(matmul_tflops(s, s, s, dtype, seconds=0.5 if quick else 2.0) for s in sizes)


def model_gemm_tflops(cfg: InfiniConfig, dtype=torch.bfloat16, quick: bool = False) -> tuple[float, float]:
    """bf16 rates of the layer's own projections at one segment's rows: (FLOP-weighted over the
    seven products, best single product). What the matmul library gives at these skinny shapes."""
    T, C, I = cfg.segment_length, cfg.hidden_size, cfg.intermediate_size
    HD, KD = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = [(T, C, HD), (T, C, KD), (T, C, KD), (T, HD, C), (T, C, I), (T, C, I), (T, I, C)]
    flops = secs = best = 0.0
    for m, k, n in shapes:
        rate = matmul_tflops(m, k, n, dtype, seconds=0.2 if quick else 0.5)
        flops += 2 * m * k * n
        secs += 2 * m * k * n / (rate * 1e12)
        best = max(best, rate)
    return flops / secs / 1e12, best


# ---- counting ----


def kv_cache_bytes(cfg: InfiniConfig, tokens: int, bytes_per_value: int = 2) -> int:
    """A full key/value cache of `tokens` tokens: layers × (K, V) × kv_heads × head_dim × tokens."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * tokens * bytes_per_value


def ingest_flops(cfg: InfiniConfig, tokens: int, start_empty: bool = True) -> int:
    """Useful FLOPs of `Engine.ingest` over `tokens` tokens (multiply-add = 2).

    Counted per segment, for what ingest actually computes: every layer but the last runs its
    projections, MLP, causal local attention (T(T+1)/2 query/key pairs, QKᵀ and AV), the memory
    read (from the second segment on) and the memory update; the last layer only projects K and V
    and updates the memory (`write_only`); the final norm and LM head are skipped. Elementwise work
    (norms, rotary, σ, SiLU, gates) is not counted.
    """
    C, I, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    proj = C * H * D + 2 * C * Hkv * D + H * D * C + 3 * C * I  # weights of q, k, v, o, gate, up, down
    total, empty = 0, start_empty
    for s in range(0, tokens, cfg.segment_length):
        T = min(cfg.segment_length, tokens - s)
        update = 2 * T * Hkv * D * D + T * Hkv * D  # σ(K)ᵀV and Σσ(K)
        if cfg.memory_update == "delta" and not empty:
            update += 2 * T * Hkv * D * (D + 1) + T * Hkv * D  # σ(K)M / σ(K)z, subtracted from V
        read = 0 if empty else 2 * T * H * D * (D + 1)  # σ(Q)M and σ(Q)z
        local = 4 * H * D * T * (T + 1) // 2  # QKᵀ and AV over the causal half
        total += (n - 1) * (2 * T * proj + local + read + update)
        total += 2 * T * 2 * C * Hkv * D + update  # the last layer: K, V and the memory update
        empty = False
    return total


# ---- one ingest, in a subprocess ----


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def ingest_child(spec: dict) -> dict:
    """Runs inside the subprocess: load the model, warm up on one segment, time one ingest."""
    import engine

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    t = time.perf_counter()
    if spec["model"] == "random":
        cfg = InfiniConfig.from_hf_dict(spec["config"])
        e = engine.Engine(engine.build_model(cfg, dtype=getattr(torch, spec["dtype"]), seed=0))
    else:
        e = engine.load_model(spec["model"], device="cpu", dtype=spec["dtype"])
        cfg = e.config
    load_s = time.perf_counter() - t
    probe = Probe()
    probe(0.5)  # wakes the threads and the matmul kernels
    rss_loaded, peak_loaded = _rss_now(), _peak_rss()
    n = spec["length"]
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    e.ingest(ids[: min(n, cfg.segment_length)], e.new_memory())  # warm-up: kernel selection, allocator
    # Each segment is timed alone and followed by a short probe of the matmul rate (not timed).
    # CPU seconds per wall second tell how much of the cores this process got (others share them).
    seg, cpu, rates = [], [], [probe()]
    start = [time.perf_counter(), time.process_time()]

    def after_segment(done: int, total: int) -> None:
        seg.append(time.perf_counter() - start[0])
        cpu.append(time.process_time() - start[1])
        rates.append(probe())
        start[:] = time.perf_counter(), time.process_time()

    mem = e.ingest(ids, e.new_memory(), progress=after_segment)
    secs = sum(seg)
    median = sorted(seg)[len(seg) // 2]
    return {
        "length": n, "seconds": secs, "segment_median_s": median, "segment_max_s": max(seg),
        "segments": len(seg), "cpu_seconds": sum(cpu), "probe_tflops": sum(rates) / len(rates), "probe_min": min(rates),
        "probe_max": max(rates), "load_seconds": load_s, "rss_loaded": rss_loaded,
        "peak_loaded": peak_loaded, "peak_rss": _peak_rss(), "snapshot_bytes": len(mem.to_bytes()),
        "config": cfg.to_hf_dict(), "threads": torch.get_num_threads(),
    }


def run_ingest(model: str, length: int, cfg: InfiniConfig | None = None, dtype: str = "bfloat16",
               threads: int | None = None) -> dict:
    """One ingest in a fresh interpreter; returns `ingest_child`'s dict."""
    spec = {"model": model, "length": length, "dtype": dtype, "threads": threads,
            "config": cfg.to_hf_dict() if cfg is not None else None}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "engine.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"the ingest of {length} tokens failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- sections ----


def ingest_table(title: str, model: str, lengths, peak: float, cfg: InfiniConfig | None = None,
                 dtype: str = "bfloat16", threads: int | None = None, log=print) -> Table:
    table = Table(title, [
        "tokens", "tokens/s", "tokens/s (median segment)", "seconds", "GFLOP/token", "TFLOP/s",
        "cores busy", "bf16 peak alongside (TFLOP/s)", "MFU", "MFU vs run's best peak", "RSS loaded (MiB)", "peak RSS (MiB)",
        "peak − loaded (MiB)", "snapshot (KiB)", "full KV cache bf16 (MiB)", "KV / snapshot",
    ])
    for n in lengths:
        log(f"  {title}: {n} tokens…")
        r = run_ingest(model, n, cfg, dtype, threads)
        c = InfiniConfig.from_hf_dict(r["config"])
        flops = ingest_flops(c, n)
        tflops = flops / r["seconds"] / 1e12
        kv = kv_cache_bytes(c, n)
        table.rows.append([
            _tokens(n), n / r["seconds"], min(n, c.segment_length) / r["segment_median_s"], r["seconds"],
            flops / n / 1e9, tflops, r["cpu_seconds"] / r["seconds"], r["probe_tflops"], _pct(tflops / r["probe_tflops"]),
            _pct(tflops / max(peak, r["probe_max"])), r["rss_loaded"] / MiB, r["peak_rss"] / MiB,
            (r["peak_rss"] - r["rss_loaded"]) / MiB, r["snapshot_bytes"] / 1024, kv / MiB, kv / r["snapshot_bytes"],
        ])
    table.notes += [
        "One fresh subprocess per length: peak RSS is `ru_maxrss` of that length alone; 'RSS loaded' "
        "is VmRSS after building the model. The timed ingest follows a one-segment warm-up; each "
        "segment is timed alone. 'tokens/s (median segment)' is one segment's tokens over the median "
        "segment time. 'cores busy' is the process's CPU seconds per wall second during the timed "
        f"segments, out of {torch.get_num_threads()} threads: less means other programs took the cores.",
        "The matmul rate of these shared machines moves by up to 4× within a minute. So after every "
        "segment (outside its timing) a 2048² bf16 product measures the rate of the moment; 'bf16 peak "
        "alongside' is the mean of those probes, and MFU is the ingest's useful FLOP/s over it. "
        f"'MFU vs run's best peak' divides by the best bf16 rate seen in the whole run ({peak:.3g} "
        "TFLOP/s at the start, or a higher probe): the pessimistic figure.",
        "FLOPs: 2 × weights of every layer's projections and MLP (the last layer only K and V: ingest "
        "skips its attention output and MLP, the final norm and the LM head), causal local attention "
        "4·H·D·T(T+1)/2 per layer and segment, and the memory read and update; elementwise work "
        "(norms, rotary, σ, SiLU, gates, casts) is not counted.",
        "Snapshot: `len(memory.to_bytes())` (float32 M and z for every layer, plus header). Full KV "
        "cache: layers × 2 × kv_heads × head_dim × tokens × 2 bytes.",
    ]
    return table


def random_section(lengths, peak: float, cfg: InfiniConfig | None = None, threads: int | None = None,
                   log=print) -> Table:
    cfg = cfg or InfiniConfig()
    title = (f"Ingest, random model ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
             f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads, segment {cfg.segment_length}), bf16")
    return ingest_table(title, "random", lengths, peak, cfg, "bfloat16", threads, log)


def peak_table(cfg: InfiniConfig, quick: bool) -> tuple[Table, float]:
    """The matmul rates of this machine, and the bf16 peak that MFU divides by: the best bf16 rate
    seen, square products or the layer's own shapes (whichever this machine runs faster)."""
    square = matmul_peak(torch.bfloat16, quick)
    fp32 = matmul_peak(torch.float32, quick)
    shapes, best_shape = model_gemm_tflops(cfg, torch.bfloat16, quick)
    peak = max(square, best_shape)
    t = Table("Matmul rates of this machine", ["measure", "TFLOP/s", "of bf16 peak"], [
        ["bf16 square products (best of several sizes and repeats)", square, _pct(square / peak)],
        [f"bf16 at the layer's own GEMM shapes ({cfg.segment_length} rows), FLOP-weighted", shapes,
         _pct(shapes / peak)],
        ["fp32 square products", fp32, _pct(fp32 / peak)],
    ], [f"bf16 peak used for MFU: {peak:.3g} TFLOP/s (the best bf16 rate above, or of a single layer shape)."])
    return t, peak


# ---- profile ----


def profile(segments: int, cfg: InfiniConfig | None = None, rows: int = 25) -> str:
    """torch.profiler over `segments` segments of ingest (after a warm-up), ops by self CPU time."""
    import engine
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    cfg = cfg or InfiniConfig()
    e = engine.Engine(engine.build_model(cfg, dtype=torch.bfloat16, seed=0))
    ids = torch.randint(0, cfg.vocab_size, (segments * cfg.segment_length,))
    e.ingest(ids[: cfg.segment_length], e.new_memory())
    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        e.ingest(ids, e.new_memory())
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ---- main ----


def run(lengths=DEFAULT_LENGTHS, cfg: InfiniConfig | None = None, quick: bool = False, threads: int | None = None,
        command: str | None = None, log=print) -> str:
    """The whole report as markdown. `cfg` replaces the default SmolLM2-135M shape (tests)."""
    cfg = cfg or InfiniConfig()
    if threads:
        torch.set_num_threads(threads)
    log("measuring the matmul peak…")
    peaks, peak = peak_table(cfg, quick)
    tables = [peaks, random_section(lengths, peak, cfg, threads, log)]
    head = ["## Benchmark", ""]
    if command:
        head += ["```", command, "```", ""]
    head += [f"Machine: {machine()}.", ""]
    return "\n".join(head) + "\n".join(t.markdown() for t in tables)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", help="comma-separated token counts (default 8192,32768,131072)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4K tokens, a short peak measurement")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", help="also write the markdown to this file")
    p.add_argument("--profile", type=int, metavar="SEGMENTS", help="profile this many segments and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(ingest_child(json.loads(a.child))))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.profile:
        print(profile(a.profile))
        return
    lengths = [int(x) for x in a.lengths.split(",")] if a.lengths else (QUICK_LENGTHS if a.quick else DEFAULT_LENGTHS)
    command = "python -m engine.bench " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    md = run(lengths, quick=a.quick, threads=a.threads, command=command.strip(),
             log=lambda s: print(s, file=sys.stderr, flush=True))
    print(md)
    if a.out:
        Path(a.out).write_text(md)


if __name__ == "__main__":
    main()
