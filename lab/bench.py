"""Speed and memory of the engine, printed as markdown tables.

    python -m lab.bench                                   # random SmolLM2-135M-shaped model, 8K/32K/128K
    python -m lab.bench --sections random,builtin,peers   # + the built-in model, and peers at 8K
    python -m lab.bench --quick --out /tmp/bench.md       # a smoke run of a few seconds
    python -m lab.bench --sections llama --threads 2      # ours beside llama.cpp on the same GGUF
    python -m lab.bench --profile 3 --profile-ops 40      # where the time of 3 segments goes

Results and how to read them: docs/performance.md.

Sections: `random` (a random model of the default `InfiniConfig` shape: the SmolLM2-135M one),
`builtin` (the built-in model: ingest, time to first token, decode) and `peers` (Hugging Face
transformers on the built-in model's weights, and the PyPI package infini-transformer-pytorch at the
same shape) and `llama` (llama.cpp on the built-in model's GGUF file, from a `llama-cpp-python` built in
its own venv, lab/runs/llama-venv; part of `peers` too). Each is one function returning tables.

Every measured run happens in a fresh subprocess, so that its peak RSS is its own. The machines
this runs on are shared: the matmul rate moves by 2-4× within a minute. So the bf16 rate is probed
between segments (outside their timing) and MFU divides by the rate of the moment: ratios measured
side by side. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from infini_reader.engine.config import InfiniConfig
from infini_reader.engine.engine import resolve_dtype
from infini_reader.app.core import models, paths

REPO = Path(__file__).resolve().parents[1]
# The compute dtype the product would choose here (engine.resolve_dtype: bf16 only where the CPU has it
# in hardware and it measures faster than float32; $INFINI_DTYPE overrides). Every model, peer and matmul probe runs in it, and MFU divides
# by its peak: the benchmark never runs a dtype this machine emulates unless asked to.
DTYPE = resolve_dtype("auto", torch.device("cpu"), paths.cache_dir())
DT = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}[DTYPE]
MiB = 1 << 20
DEFAULT_LENGTHS = (8192, 32768, 131072)
QUICK_LENGTHS = (4096,)
QUESTION = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Options:
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    sections: tuple[str, ...] = ("random",)
    peer_lengths: tuple[int, ...] = (8192,)
    decode_tokens: int = 64  # new tokens for the decode rate (greedy; a stop token may end it sooner)
    quick: bool = False  # short matmul measurements (the lengths are chosen by the caller)
    threads: int | None = None
    wait_quiet: float = 0.0  # seconds to wait at most, before each run, for the other programs to calm down
    cfg: InfiniConfig | None = None  # the random model's shape; default InfiniConfig() (SmolLM2-135M)
    # the `adapters` section: adapter files read side by side with the model without them
    adapters: tuple[str, ...] = ()
    adapter_base: str = "builtin"  # "builtin" (beside the shipped adapter) or "random" (beside none)
    repeats: int = 2  # alternating runs of each in the `adapters` section
    log: Callable[[str], None] = print


# ---- tables ----


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|:---|" + "|".join("---:" for _ in self.columns[1:]) + "|"]
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


def cpu_pressure() -> tuple[float, int]:
    """(avg10 in %, total µs) of /proc/pressure/cpu "some": time in which a runnable task waited
    for a core. The runs use as many threads as cores, so waiting means someone else ran."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        kv = dict(x.split("=") for x in some[1:])
        return float(kv["avg10"]), int(kv["total"])
    except (OSError, IndexError, KeyError, ValueError):
        return float("nan"), 0


def wait_quiet(max_seconds: float, log=print, below: float = 10.0) -> None:
    """Wait (at most max_seconds) until other programs leave the cores alone (pressure avg10 < below %)."""
    t_end = time.monotonic() + max_seconds
    while cpu_pressure()[0] > below and time.monotonic() < t_end:
        log(f"  waiting for a quiet machine (CPU pressure {cpu_pressure()[0]:.0f}%)…")
        time.sleep(10)


class Probe:
    """A bf16 matmul kept ready to measure the machine's matmul rate of the moment, in TFLOP/s:
    the best of repeats over `seconds` (at least 3). The first products of a size are slow
    (kernel selection, threads waking, clocks rising), so keep the best rather than the mean."""

    def __init__(self, m: int = 2048, k: int = 2048, n: int = 2048, dtype=DTYPE):
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


def matmul_peak(dtype=DTYPE, quick: bool = False) -> float:
    """This machine's matmul peak: the best square product over a few sizes."""
    sizes = (2048 if dtype == torch.bfloat16 else 1024,) if quick else (2048, 4096, 8192)
    return max(Probe(s, s, s, dtype)(0.3 if quick else 2.0) for s in sizes)


def model_gemm_tflops(cfg: InfiniConfig, quick: bool = False) -> tuple[float, float]:
    """bf16 rates of the layer's own projections at one segment's rows: (FLOP-weighted over the
    seven products, best single product). What the matmul library gives at these skinny shapes."""
    T, C, I = cfg.segment_length, cfg.hidden_size, cfg.intermediate_size
    HD, KD = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = [(T, C, HD), (T, C, KD), (T, C, KD), (T, HD, C), (T, C, I), (T, C, I), (T, I, C)]
    flops = secs = best = 0.0
    for m, k, n in shapes:
        rate = Probe(m, k, n)(0.05 if quick else 0.5)
        flops += 2 * m * k * n
        secs += 2 * m * k * n / (rate * 1e12)
        best = max(best, rate)
    return flops / secs / 1e12, best


# ---- counting ----


def kv_cache_bytes(cfg: InfiniConfig, tokens: int, bytes_per_value: int = 2) -> int:
    """A full key/value cache of `tokens` tokens: layers × (K, V) × kv_heads × head_dim × tokens."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * tokens * bytes_per_value


def _layer_weights(cfg: InfiniConfig, kv_heads: int | None = None) -> int:
    C, I, H, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim
    Hkv = kv_heads or cfg.num_key_value_heads
    return C * H * D + 2 * C * Hkv * D + H * D * C + 3 * C * I  # q, k, v, o, gate, up, down


def _causal_attention(cfg: InfiniConfig, T: int, past: int = 0) -> int:
    """QKᵀ and AV of T queries over `past` earlier keys plus the causal half of their own."""
    return 4 * cfg.num_attention_heads * cfg.head_dim * (T * past + T * (T + 1) // 2)


def ingest_flops(cfg: InfiniConfig, tokens: int, start_empty: bool = True) -> int:
    """Useful FLOPs of `Engine.ingest` over `tokens` tokens (multiply-add = 2).

    Counted per segment, for what ingest actually computes: every layer but the last runs its
    projections, MLP, causal local attention (T(T+1)/2 query/key pairs, QKᵀ and AV), the memory
    read (from the second segment on) and the memory update; the last layer only projects K and V
    and updates the memory (`write_only`); the final norm and LM head are skipped. Elementwise work
    (norms, rotary, σ, SiLU, gates) is not counted.
    """
    C, n = cfg.hidden_size, cfg.num_hidden_layers
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    total, empty = 0, start_empty
    for s in range(0, tokens, cfg.segment_length):
        T = min(cfg.segment_length, tokens - s)
        update = 2 * T * Hkv * D * D + T * Hkv * D  # σ(K)ᵀV and Σσ(K)
        if cfg.memory_update == "delta" and not empty:
            update += 2 * T * Hkv * D * (D + 1) + T * Hkv * D  # σ(K)M / σ(K)z, subtracted from V
        read = 0 if empty else 2 * T * H * D * (D + 1)  # σ(Q)M and σ(Q)z
        total += (n - 1) * (2 * T * _layer_weights(cfg) + _causal_attention(cfg, T) + read + update)
        total += 2 * T * 2 * C * Hkv * D + update  # the last layer: K, V and the memory update
        empty = False
    return total


def dense_forward_flops(cfg: InfiniConfig, tokens: int, past: int = 0, logits: int = 1,
                        kv_heads: int | None = None) -> int:
    """A plain causal transformer over `tokens` new tokens after `past` cached ones: every layer's
    projections and MLP, causal attention, and the LM head for `logits` positions."""
    per_layer = 2 * tokens * _layer_weights(cfg, kv_heads) + _causal_attention(cfg, tokens, past)
    return cfg.num_hidden_layers * per_layer + 2 * logits * cfg.hidden_size * cfg.vocab_size


# ---- the subprocess side: one measured run ----


def _status(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Reset VmHWM, so the peak after this point excludes the loading of the weights."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Clock:
    """Times a run piece by piece (segments); after each piece, outside the timing, probes the
    matmul rate. Also counts the CPU seconds the process got and the cores' pressure."""

    def __init__(self, probe: Probe):
        self.probe, self.pieces, self.cpu, self.rates = probe, [], [], [probe()]
        self.psi0, self.wall0 = cpu_pressure()[1], time.perf_counter()
        self._start()

    def _start(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self, *_) -> None:  # also usable as an ingest progress callback
        self.pieces.append(time.perf_counter() - self.t)
        self.cpu.append(time.process_time() - self.c)
        self.rates.append(self.probe())
        self._start()

    def result(self) -> dict:
        p = sorted(self.pieces)
        return {
            "seconds": sum(p), "piece_median_s": p[len(p) // 2], "piece_min_s": p[0], "pieces": len(p),
            "cpu_seconds": sum(self.cpu),
            "cpu_pressure": (cpu_pressure()[1] - self.psi0) / 1e6 / (time.perf_counter() - self.wall0),
            "probe_tflops": sum(self.rates) / len(self.rates), "probe_max": max(self.rates),
        }


def child(spec: dict) -> dict:
    """Runs inside the subprocess: load what `spec` names, warm up, measure, report a dict."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    t = time.perf_counter()
    job = {"ingest": _child_ingest, "hf": _child_hf, "lucidrains": _child_lucidrains}[spec["job"]]
    run = job(spec)  # loads, returns a function that measures with the given probe
    out = {"load_seconds": time.perf_counter() - t, "peak_load": _status("VmHWM")}
    probe = Probe()
    probe(0.2 if spec.get("quick") else 0.5)  # wakes the threads and the matmul kernels
    out.update(rss_loaded=_status("VmRSS"), threads=torch.get_num_threads())
    out.update(run(probe))
    return out


def _as_load_model_does() -> None:
    """The process-wide settings `engine.load_model` makes (a random model is built without it)."""
    from infini_reader.engine import engine as engine_module

    tune = getattr(engine_module, "tune_allocator", None)
    if tune is not None:
        tune()


def _child_ingest(spec: dict):
    from infini_reader import engine

    if spec["model"] == "random":
        _as_load_model_does()
        cfg = InfiniConfig.from_hf_dict(spec["config"])
        model = engine.build_model(cfg, dtype=DTYPE, seed=0)
        if spec.get("adapter"):  # as load_model applies one: merged, then everything in the model's dtype
            from infini_reader.engine.adapter import apply_adapter

            apply_adapter(model, spec["adapter"])
            model.to(DTYPE)
        e = engine.Engine(model)
    else:
        e = models.load_model(spec["model"], device="cpu", dtype=DTYPE, adapter=spec.get("adapter") or "auto")
    cfg = e.config
    n = spec["length"]
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(0))

    def run(probe: Probe) -> dict:
        e.ingest(ids[: min(n, cfg.segment_length)], e.new_memory())  # warm-up: kernels, allocator
        _reset_peak()
        clock = Clock(probe)
        mem = e.ingest(ids, e.new_memory(), progress=clock.lap)
        out = clock.result()
        out.update(peak_run=_status("VmHWM"), snapshot_bytes=len(mem.to_bytes()), config=cfg.to_hf_dict(),
                   fingerprint=e.fingerprint)
        if spec.get("decode_tokens"):
            out.update(_generate(e, mem, spec["decode_tokens"]))
            for mode in spec.get("decode_modes") or ():  # each decode path of engine/quant.py, one after the other
                out.setdefault("decode_by_mode", {})[mode] = _generate(e, mem, spec["decode_tokens"], mode)
        return out

    return run


def _generate(e, mem, max_new_tokens: int, decode: str | None = None) -> dict:
    """Time to the first text piece and decode tokens/s of `Engine.generate` on top of `mem` (`decode`:
    the engine's choice by default, else "int8" or "exact")."""
    prompt_len = e.prompt_ids(QUESTION).numel()
    after = []
    psi0, t0 = cpu_pressure()[1], time.perf_counter()
    pieces = e.generate(QUESTION, mem, max_new_tokens=max_new_tokens, temperature=0, on_memory=after.append,
                        decode=decode)
    first = None
    for _ in pieces:
        first = first or time.perf_counter()
    end = time.perf_counter()
    new = after[0].tokens - mem.tokens - prompt_len if after else 0  # tokens fed after the prompt
    return {"prompt_tokens": prompt_len, "ttft": (first or end) - t0, "new_tokens": new,
            "decode_tps": new / (end - first) if first and new else float("nan"),
            "gen_pressure": (cpu_pressure()[1] - psi0) / 1e6 / (end - t0)}


def _child_hf(spec: dict):
    """transformers on the GGUF file's weights in bf16: one forward over the whole context (the
    last position's logits only), then greedy decode with its KV cache."""
    from transformers import AutoModelForCausalLM

    gguf = Path(spec["gguf"])
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=DTYPE).eval()
    vocab, n = model.config.vocab_size, spec["length"]
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def run(probe: Probe) -> dict:
        model(ids[:, :512], logits_to_keep=1)  # warm-up
        _reset_peak()
        clock = Clock(probe)
        out = model(ids, logits_to_keep=1, use_cache=True)
        clock.lap()
        res = clock.result()
        res["peak_run"] = _status("VmHWM")
        pkv, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        steps = spec.get("decode_tokens") or 0
        t = time.perf_counter()
        for _ in range(steps):
            o = model(tok, past_key_values=pkv, use_cache=True, logits_to_keep=1)
            pkv, tok = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
        res["decode_tps"] = steps / (time.perf_counter() - t) if steps else float("nan")
        c = model.config
        res["config"] = InfiniConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
            intermediate_size=c.intermediate_size,
        ).to_hf_dict()
        return res

    return run


def _child_lucidrains(spec: dict):
    """infini-transformer-pytorch (lucidrains) at the random model's shape, random weights, bf16,
    fed segment by segment with its memories carried (return_new_memories=True)."""
    from infini_transformer_pytorch import InfiniTransformer

    cfg = InfiniConfig.from_hf_dict(spec["config"])
    torch.manual_seed(0)
    model = InfiniTransformer(
        num_tokens=cfg.vocab_size, dim=cfg.hidden_size, depth=cfg.num_hidden_layers, dim_head=cfg.head_dim,
        heads=cfg.num_attention_heads, ff_mult=cfg.intermediate_size * 3 / (2 * cfg.hidden_size),
    ).to(DTYPE).eval()
    n, L = spec["length"], cfg.segment_length
    ids = torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def run(probe: Probe) -> dict:
        model(ids[:, :L], return_new_memories=True)  # warm-up
        _reset_peak()
        clock, mems = Clock(probe), None
        for s in range(0, n, L):
            mems = model(ids[:, s : s + L], past_memories=mems, return_new_memories=True).past_memories
            clock.lap()
        res = clock.result()
        res["peak_run"] = _status("VmHWM")
        res["snapshot_bytes"] = sum(m.numel() * m.element_size() for pair in mems for m in pair)
        return res

    return run


def _llama_child(spec: dict) -> dict:
    """llama.cpp (llama-cpp-python) on the GGUF file, in an interpreter that has `llama_cpp` (its
    source is sent there: this function imports nothing from the lab). Load; prompt processing of
    `length` random tokens; greedy decode of `decode_tokens` after a short prompt of `prompt_tokens`
    (as our answers decode on top of a memory, attending over the prompt only)."""
    import random
    import time

    import llama_cpp
    import numpy as np

    n, steps, threads = spec["length"], spec.get("decode_tokens") or 0, spec["threads"]
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=spec["gguf"], n_ctx=n + 64, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False)
    load = time.perf_counter() - t
    rng = random.Random(0)
    ids = [rng.randrange(llm.n_vocab()) for _ in range(n)]
    llm.eval(ids[:64])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    read = time.perf_counter() - t
    llm.reset()
    llm.eval(ids[: spec.get("prompt_tokens") or 32])
    t = time.perf_counter()
    for _ in range(steps):  # greedy: the argmax of the last position's logits (the only ones kept)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),))
        llm.eval([int(logits.argmax())])
    decode = time.perf_counter() - t
    return {"load_seconds": load, "seconds": read, "decode_tps": steps / decode if steps else float("nan"),
            "version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode()}


LLAMA_VENV = REPO / "lab" / "runs" / "llama-venv"  # where lab/README-style builds of llama-cpp-python go


def llama_python() -> str | None:
    """An interpreter that can import llama_cpp: $INFINI_LLAMA_PYTHON, this one, or the lab's own
    venv (`lab/runs/llama-venv`, built from the source package); None when there is none."""
    import importlib.util

    for py in (os.environ.get("INFINI_LLAMA_PYTHON"), sys.executable if importlib.util.find_spec("llama_cpp") else None,
               str(LLAMA_VENV / "bin" / "python")):
        if py and Path(py).exists() and subprocess.run([py, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
            return py
    return None


def measure_llama(spec: dict, opts: Options, python: str) -> dict:
    """`_llama_child(spec)` in a fresh `python` (the llama.cpp interpreter)."""
    import inspect

    if opts.wait_quiet:
        wait_quiet(opts.wait_quiet, opts.log)
    code = (inspect.getsource(_llama_child) + "\nimport json, sys\n"
            "print(json.dumps(_llama_child(json.loads(sys.argv[1]))))\n")
    proc = subprocess.run([python, "-c", code, json.dumps(spec)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"llama.cpp at {spec['length']} tokens failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(spec: dict, opts: Options) -> dict:
    """`child(spec)` in a fresh interpreter."""
    if opts.wait_quiet:
        wait_quiet(opts.wait_quiet, opts.log)
    spec = dict(spec, threads=opts.threads, quick=opts.quick)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "lab.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"the run {spec['job']} of {spec['length']} tokens failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- sections ----

SPEED_COLUMNS = ["tokens", "tokens/s", "tokens/s (median segment)", "tokens/s (best segment)", "seconds",
                 "GFLOP/token", "TFLOP/s", f"{DT} rate alongside (TFLOP/s)", "MFU", "MFU (best segment, vs best peak)",
                 "cores busy", "CPU pressure"]
MEMORY_COLUMNS = ["tokens", "RSS loaded (MiB)", "peak while loading (MiB)", "peak RSS during run (MiB)",
                  "growth (MiB)", "snapshot (KiB)", f"full KV cache {DT} (MiB)", "KV cache / snapshot"]


def _speed_row(label: str, n: int, flops: int, r: dict, peak: float, per_piece: int) -> list:
    tflops = flops / r["seconds"] / 1e12
    best = flops / n * per_piece / r["piece_min_s"] / 1e12
    return [label, n / r["seconds"], per_piece / r["piece_median_s"], per_piece / r["piece_min_s"], r["seconds"],
            flops / n / 1e9, tflops, r["probe_tflops"], _pct(tflops / r["probe_tflops"]),
            _pct(best / max(peak, r["probe_max"])), r["cpu_seconds"] / r["seconds"], _pct(r["cpu_pressure"])]


def _memory_row(label: str, cfg: InfiniConfig, n: int, r: dict) -> list:
    kv = kv_cache_bytes(cfg, n, DTYPE.itemsize)
    snap = r.get("snapshot_bytes")
    return [label, r["rss_loaded"] / MiB, r["peak_load"] / MiB, r["peak_run"] / MiB,
            (r["peak_run"] - r["rss_loaded"]) / MiB, snap / 1024 if snap else "—", kv / MiB,
            kv / snap if snap else "—"]


SPEED_NOTES = [
    "Each row is a fresh subprocess. The timed run follows a one-segment warm-up; each segment is "
    "timed alone. 'tokens/s (median/best segment)': one segment's tokens over the median/shortest "
    "segment time; the best segment is the estimate for a machine nobody else is using.",
    f"After every segment (outside its timing) a 2048² {DT} product probes the machine's matmul rate; "
    f"'{DT} rate alongside' is the mean of those probes and MFU the run's useful FLOP/s over it. 'MFU (best "
    f"segment, vs best peak)' is the best segment's FLOP/s over the best {DT} rate seen in the benchmark. "
    "'cores busy' is the process's CPU seconds per wall second (out of its threads); 'CPU pressure' the "
    "share of the run in which some task waited for a core (/proc/pressure/cpu): other programs running.",
    "Useful FLOPs (multiply-add = 2): 2 × the weights of every projection and MLP product that runs, "
    "causal attention 4·H·D·(pairs of query and earlier key), the memory read σ(Q)M, σ(Q)z and update "
    "σ(K)ᵀV; ingest skips the last layer's attention output and MLP, the final norm and the LM head. "
    "Elementwise work (norms, rotary, σ, SiLU, gates, casts) is not counted.",
]
MEMORY_NOTES = [
    "'RSS loaded': VmRSS with the weights loaded. 'peak while loading': VmHWM once they are loaded (the "
    "model is built in float32, then cast). 'peak RSS during run': VmHWM reset after loading and the "
    "warm-up (/proc/self/clear_refs) and read at the end of the run: this length's own peak; 'growth': "
    "that minus 'RSS loaded'. (`ru_maxrss` is not used: the reset moves it too.)",
    "Snapshot: `len(memory.to_bytes())` (float32 M and z of every layer, plus header). Full KV cache: "
    f"layers × 2 × kv_heads × head_dim × tokens × bytes of {DT}.",
]


def _shape(cfg: InfiniConfig) -> str:
    return (f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads}/"
            f"{cfg.num_key_value_heads} heads, segment {cfg.segment_length}")


def peak_section(opts: Options) -> tuple[list[Table], float]:
    """The matmul rates of this machine, and the bf16 peak that the pessimistic MFU divides by: the
    best bf16 rate seen, square products or the layer's own shapes (whichever runs faster here)."""
    cfg = opts.cfg or InfiniConfig()
    opts.log("measuring matmul rates…")
    square = matmul_peak(DTYPE, opts.quick)
    fp32 = matmul_peak(torch.float32, opts.quick)
    shapes, best_shape = model_gemm_tflops(cfg, opts.quick)
    peak = max(square, best_shape)
    t = Table("Matmul rates of this machine", ["measure", "TFLOP/s", f"of {DT} peak"], [
        [f"{DT} square products (best of sizes 2048-8192 and repeats)", square, _pct(square / peak)],
        [f"{DT} at the layer's own GEMM shapes ({cfg.segment_length} rows), FLOP-weighted", shapes,
         _pct(shapes / peak)],
        ["fp32 square products", fp32, _pct(fp32 / peak)],
    ], [f"{DT} peak for 'MFU (best segment, vs best peak)': {peak:.3g} TFLOP/s (the best {DT} rate above, or "
        "of a single layer shape), measured at the start of the run."])
    return [t], peak


def random_section(opts: Options, peak: float) -> list[Table]:
    cfg = opts.cfg or InfiniConfig()
    speed = Table(f"Ingest speed, random model ({_shape(cfg)}), {DT}", SPEED_COLUMNS)
    memory = Table("Ingest memory, same runs", MEMORY_COLUMNS)
    for n in opts.lengths:
        opts.log(f"  random model, ingest of {n} tokens…")
        r = measure({"job": "ingest", "model": "random", "length": n, "config": cfg.to_hf_dict()}, opts)
        speed.rows.append(_speed_row(_tokens(n), n, ingest_flops(cfg, n), r, peak, min(n, cfg.segment_length)))
        memory.rows.append(_memory_row(_tokens(n), cfg, n, r))
    return [speed, memory]


def builtin_section(opts: Options, peak: float) -> list[Table]:
    """The built-in model: ingest at each length, then a question on top of the memory."""
    speed = memory = None
    gen = Table("Built-in model: answering on top of the memory (`Engine.generate`, greedy)",
                ["book tokens", "prompt tokens", "time to first token (s)", "new tokens", "decode tokens/s",
                 "CPU pressure"],
                notes=["Time to first token: from the call to the first text piece, the prompt (a chat "
                       "message) processed on top of the memory. Decode: new tokens over the time after the "
                       f"first piece (up to {opts.decode_tokens} new tokens; a stop token may end sooner)."])
    for n in opts.lengths:
        opts.log(f"  built-in model, ingest of {n} tokens and a question…")
        r = measure({"job": "ingest", "model": "builtin", "length": n, "decode_tokens": opts.decode_tokens}, opts)
        cfg = InfiniConfig.from_hf_dict(r["config"])
        if speed is None:
            speed = Table(f"Built-in model ({_shape(cfg)}): ingest speed, {DT}", SPEED_COLUMNS)
            memory = Table("Built-in model: ingest memory, same runs", MEMORY_COLUMNS)
        speed.rows.append(_speed_row(_tokens(n), n, ingest_flops(cfg, n), r, peak, min(n, cfg.segment_length)))
        memory.rows.append(_memory_row(_tokens(n), cfg, n, r))
        gen.rows.append([_tokens(n), r["prompt_tokens"], r["ttft"], r["new_tokens"], r["decode_tps"],
                         _pct(r["gen_pressure"])])
    return [t for t in (speed, memory, gen) if t is not None]


def adapters_section(opts: Options, peak: float) -> list[Table]:
    """Each adapter beside the model without it (the built-in model with its shipped adapter, or the
    random model with none), at each length: the runs alternate, base then each adapter, `repeats`
    times, so that other programs' load falls on all of them alike; rows give the mean of the repeats
    and the ratio to the base's mean."""
    random_base = opts.adapter_base == "random"
    cfg = opts.cfg or InfiniConfig()
    files = [Path(a).name for a in opts.adapters]  # the full path where two files share a name
    files = files if len(set(files)) == len(files) else list(opts.adapters)
    names = ["shipped adapter" if not random_base else "no adapter"] + files
    decode = 0 if random_base else opts.decode_tokens
    columns = ["adapter", "weights", "tokens", "tokens/s", "vs base", "tokens/s (best segment)",
               "vs base (best segment)", "MFU alongside", "CPU pressure"]
    if decode:
        columns += ["time to first token (s)", "decode tokens/s", "decode vs base"]
    base_name = "the random model" if random_base else "the built-in model"
    speed = Table(f"Adapters side by side on {base_name}: ingest and answering, {DT}", columns, notes=[
        f"Each cell is the mean of {opts.repeats} runs; the runs alternate (base, then each adapter, and again), "
        "each in a fresh subprocess. 'weights': the loaded model's fingerprint (what the snapshots of its memory "
        "are stamped with). 'vs base': this row's rate over the base's at the same length. MFU counts "
        "the base model's useful FLOPs in every row (an adapter's own low-rank products are not counted)."])
    for n in opts.lengths:
        runs = [[] for _ in names]  # per row, its repeats
        for rep in range(opts.repeats):
            for i, (name, adapter) in enumerate(zip(names, [None, *opts.adapters])):
                opts.log(f"  {name}, ingest of {n} tokens ({rep + 1}/{opts.repeats})…")
                spec = {"job": "ingest", "model": "random" if random_base else "builtin", "length": n,
                        "adapter": adapter, "decode_tokens": decode}
                if random_base:
                    spec["config"] = cfg.to_hf_dict()
                runs[i].append(measure(spec, opts))
        mean = [{f: sum(r[f] for r in v) / len(v) for f in ("seconds", "piece_min_s", "probe_tflops",
                                                            "cpu_pressure", "ttft", "decode_tps")
                 if f in v[0]} for v in runs]
        run_cfg = InfiniConfig.from_hf_dict(runs[0][0]["config"])
        flops, piece = ingest_flops(run_cfg, n), min(n, run_cfg.segment_length)
        base = mean[0]
        for name, m, v in zip(names, mean, runs):
            row = [name, v[0]["fingerprint"][:8], _tokens(n), n / m["seconds"],
                   base["seconds"] / m["seconds"], piece / m["piece_min_s"],
                   base["piece_min_s"] / m["piece_min_s"], _pct(flops / m["seconds"] / 1e12 / m["probe_tflops"]),
                   _pct(m["cpu_pressure"])]
            if decode:
                row += [m["ttft"], m["decode_tps"], m["decode_tps"] / base["decode_tps"]]
            speed.rows.append(row)
    return [speed]


def peers_section(opts: Options, peak: float) -> list[Table]:
    """Side by side at equal lengths: this engine (built-in model), transformers on the same
    weights (one forward over the whole context, as far as the model's context reaches), and
    infini-transformer-pytorch at the random model's shape."""
    from infini_reader.app.core.builtin import model_path

    cfg = opts.cfg or InfiniConfig()
    columns = ["implementation"] + SPEED_COLUMNS + ["decode tokens/s"]
    speed = Table(f"Peers, side by side: reading a context, {DT}", columns,
                  notes=[
                      "Ours: `Engine.ingest` of the built-in model (memory only, no LM head). transformers: "
                      f"`AutoModelForCausalLM.from_pretrained(gguf dir, gguf_file=...)` in {DT}, one forward over "
                      "the whole context with `logits_to_keep=1` (its KV cache kept), FLOPs counted the same way "
                      "plus one LM head row; decode: greedy steps on that KV cache. infini-transformer-pytorch "
                      "0.2.x: random weights at the same shape but its own design (full multi-head K/V, no "
                      "GQA; it computes every position's logits), fed 2048-token segments with "
                      "`return_new_memories=True`; its FLOPs include its larger K/V projections and LM head."])
    memory = Table("Peers: memory, same runs", ["implementation"] + MEMORY_COLUMNS)
    for n in opts.peer_lengths:
        runs = []
        opts.log(f"  peers at {n} tokens: ours…")
        r = measure({"job": "ingest", "model": "builtin", "length": n, "decode_tokens": opts.decode_tokens}, opts)
        c = InfiniConfig.from_hf_dict(r["config"])
        runs.append(("Infini Reader (ours)", r, ingest_flops(c, n), c, min(n, c.segment_length)))
        if n <= c.max_position_embeddings:
            opts.log(f"  peers at {n} tokens: transformers…")
            try:
                r = measure({"job": "hf", "gguf": str(model_path()), "length": n,
                             "decode_tokens": opts.decode_tokens}, opts)
                hc = InfiniConfig.from_hf_dict(r["config"])
                runs.append((f"transformers {_version('transformers')}", r, dense_forward_flops(hc, n), hc, n))
            except RuntimeError as exc:
                opts.log(f"  transformers failed: {exc}")
        opts.log(f"  peers at {n} tokens: infini-transformer-pytorch…")
        try:
            r = measure({"job": "lucidrains", "length": n, "config": cfg.to_hf_dict()}, opts)
            segs = [min(cfg.segment_length, n - s) for s in range(0, n, cfg.segment_length)]
            flops = sum(dense_forward_flops(cfg, T, logits=T, kv_heads=cfg.num_attention_heads) for T in segs)
            runs.append((f"infini-transformer-pytorch {_version('infini-transformer-pytorch')} (random)",
                         r, flops, cfg, min(n, cfg.segment_length)))
        except RuntimeError as exc:
            opts.log(f"  infini-transformer-pytorch failed: {exc}")
        for name, r, flops, c, piece in runs:
            speed.rows.append([name] + _speed_row(_tokens(n), n, flops, r, peak, piece)
                              + [r.get("decode_tps", "—")])
            memory.rows.append([name] + _memory_row(_tokens(n), c, n, r))
    return [speed, memory]


def llama_section(opts: Options) -> list[Table]:
    """Ours beside llama.cpp on the built-in model's GGUF file, with the same threads, side by side:
    reading (our `Engine.ingest` against its prompt processing), decode (our `Engine.generate`,
    greedy, on top of the memory, against its greedy steps after a prompt as long as ours) and load."""
    from infini_reader.app.core.builtin import model_path

    threads = opts.threads or torch.get_num_threads()
    title = f"llama.cpp side by side: the built-in model's GGUF, {threads} threads, ours in {DT}"
    python = llama_python()
    if python is None:
        return [Table(title, ["measure"], notes=[
            "llama.cpp skipped: `llama_cpp` is not importable here, nor in $INFINI_LLAMA_PYTHON or "
            f"{LLAMA_VENV.relative_to(REPO)} (build it there: `python -m venv {LLAMA_VENV.relative_to(REPO)} && "
            f"{LLAMA_VENV.relative_to(REPO)}/bin/pip install --no-binary llama-cpp-python llama-cpp-python`)."])]
    read = Table(title, ["measure", "tokens", "ours", "llama.cpp", "ours / llama.cpp", "rounds (ours / llama.cpp)"])
    decode = Table(f"Decode (answers), greedy, {threads} threads: ours / llama.cpp",
                   ["book tokens", "prompt tokens", "ours", "ours (tokens/s)", "llama.cpp (tokens/s)",
                    "ours / llama.cpp", "rounds (ours / llama.cpp)"])
    from infini_reader.engine.quant import resolve_decode

    modes = ["int8", "exact"] if resolve_decode("int8", "cpu") == "int8" else ["exact"]
    default = resolve_decode(None, "cpu")
    info, loads = "", []
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731  (the upper median of an even count)
    for n in opts.peer_lengths:
        ours_runs, their_runs = [], []
        for r in range(max(1, opts.repeats)):  # alternated: contention from other programs hits both alike
            loads.append(os.getloadavg()[0])
            opts.log(f"  llama.cpp peer at {n} tokens, round {r + 1}: ours…")
            ours_runs.append(measure({"job": "ingest", "model": "builtin", "length": n,
                                      "decode_tokens": opts.decode_tokens, "decode_modes": modes}, opts))
            opts.log(f"  llama.cpp peer at {n} tokens, round {r + 1}: llama.cpp…")
            try:
                their_runs.append(measure_llama({"gguf": str(model_path()), "length": n, "threads": threads,
                                                 "decode_tokens": opts.decode_tokens,
                                                 "prompt_tokens": ours_runs[-1]["prompt_tokens"]}, opts, python))
            except RuntimeError as exc:
                opts.log(f"  llama.cpp failed: {exc}")
                read.notes.append(f"llama.cpp failed at {n} tokens: {str(exc).splitlines()[-1]}")
                ours_runs.pop()
                break
        if not their_runs:
            continue
        theirs = their_runs[-1]
        info = f"llama-cpp-python {theirs['version']}; its system info: `{theirs['system_info'].strip()}`"
        pairs = list(zip(ours_runs, their_runs))

        def row(label, ours_of, theirs_of, per_second=True):
            o, t = [ours_of(a) for a, _ in pairs], [theirs_of(b) for _, b in pairs]
            rounds = ", ".join(f"{x / y:.2f}" for x, y in zip(o, t))
            return [label, _tokens(n), med(o), med(t), med(o) / med(t), rounds]

        read.rows.append(row("reading (tokens/s)", lambda a: n / a["seconds"], lambda b: n / b["seconds"]))
        read.rows.append(row("load (s)", lambda a: a["load_seconds"], lambda b: b["load_seconds"]))
        for mode in modes:
            label = f"decode {mode}" + (" (default)" if mode == default else "")
            _, _, o, t, ratio, rounds = row(label, lambda a: a["decode_by_mode"][mode]["decode_tps"],
                                            lambda b: b["decode_tps"])
            decode.rows.append([_tokens(n), ours_runs[0]["prompt_tokens"], label, o, t, ratio, rounds])
    read.notes += [
        "Reading: ours is `Engine.ingest` (the memory written, no LM head), llama.cpp's `Llama.eval` of the same "
        "number of random tokens (prompt processing, batches of 512, its KV cache filled). Load: ours from the "
        "start of the fresh subprocess's load (engine import, converted weights from the cache, the shipped "
        "adapter) to a ready engine; llama.cpp's `Llama(...)` on the GGUF file (the file in the page cache: warm).",
        f"Each measure is a fresh subprocess; ours then llama.cpp, alternated {max(1, opts.repeats)} times (`--repeats`); "
        "the table gives the medians, the last column each round's ratio. Load average (1 min) at the start of "
        f"each round: {', '.join(f'{x:.1f}' for x in loads)}. " + info]
    decode.notes.append(
        "Ours: `Engine.generate` on top of the memory of the book, new tokens over the time after the first "
        "text piece, by each decode path (engine/quant.py: `int8` products with an exactly rescored vocabulary "
        "shortlist, or `exact`), in the same subprocess. llama.cpp: `Llama.eval` of a prompt of as many tokens "
        f"as ours, then greedy steps (argmax of its logits, `eval([token])`), up to {opts.decode_tokens} new "
        "tokens each.")
    return [read, decode]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


# ---- profile: where the time of an ingest goes ----


def profile(segments: int = 2, cfg: InfiniConfig | None = None, ops: int = 0) -> str:
    """Exclusive wall time of an ingest by part of the model, from forward hooks on the modules and
    wrappers around the model's functions (the model's code is not changed). With `ops`, also the
    torch.profiler table of that many operators by self CPU time."""
    from infini_reader import engine
    import infini_reader.engine.model as em

    cfg = cfg or InfiniConfig()
    _as_load_model_does()
    e = engine.Engine(engine.build_model(cfg, dtype=DTYPE, seed=0))
    ids = torch.randint(0, cfg.vocab_size, (segments * cfg.segment_length,))
    times: dict[str, float] = {}
    stack: list[list] = []  # [name, start, time spent in timed children]

    def enter(name):
        stack.append([name, time.perf_counter(), 0.0])

    def leave():
        name, t0, inner = stack.pop()
        spent = time.perf_counter() - t0
        times[name] = times.get(name, 0.0) + spent - inner
        if stack:
            stack[-1][2] += spent

    def timed(name, fn):
        def wrapper(*a, **k):
            enter(name)
            try:
                return fn(*a, **k)
            finally:
                leave()
        return wrapper

    handles = []

    def hook(module, name):
        handles.append(module.register_forward_pre_hook(lambda *_: enter(name)))
        handles.append(module.register_forward_hook(lambda *_: leave()))

    e.ingest(ids[: cfg.segment_length], e.new_memory())  # warm-up, untimed
    for layer in e.model.model.layers:
        a = layer.self_attn
        hook(layer, "decoder layer: residual adds")
        hook(a, "attention: rest (σ, fp32 casts, gate mix, transposes)")
        for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj):
            hook(p, "q, k, v, o projections")
        hook(layer.mlp, "MLP: SiLU × up")
        for p in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            hook(p, "MLP matmuls (gate, up, down)")
        hook(layer.input_layernorm, "RMSNorm")
        hook(layer.post_attention_layernorm, "RMSNorm")
    labels = {"local_attention": "local attention", "memory_delta": "memory update (fp32)",
              "memory_retrieve": "memory read (fp32)", "apply_rotary": "rotary"}
    saved = {n: getattr(em, n) for n in labels if hasattr(em, n)}
    for n, fn in saved.items():
        setattr(em, n, timed(labels[n], fn))
    probe = Probe()
    try:
        rate0 = probe(0.5)
        psi0, t0 = cpu_pressure()[1], time.perf_counter()
        e.ingest(ids, e.new_memory())
        wall = time.perf_counter() - t0
        pressure = (cpu_pressure()[1] - psi0) / 1e6 / wall
        rate = (rate0 + probe(0.5)) / 2
    finally:
        for n, fn in saved.items():
            setattr(em, n, fn)
        for h in handles:
            h.remove()
    prof_table = None
    if ops:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            e.ingest(ids, e.new_memory())
        prof_table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=ops, max_name_column_width=30, max_shapes_column_width=70)

    T, n_seg, L = cfg.segment_length, segments, cfg.num_hidden_layers
    C, I, H, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim
    Hkv = cfg.num_key_value_heads
    flops = {  # useful FLOPs per part, for the rate column
        "q, k, v, o projections": n_seg * 2 * T * ((L - 1) * (2 * C * H * D + 2 * C * Hkv * D) + 2 * C * Hkv * D),
        "MLP matmuls (gate, up, down)": n_seg * (L - 1) * 2 * T * 3 * C * I,
        "local attention": n_seg * (L - 1) * _causal_attention(cfg, T),
        "memory read (fp32)": (n_seg - 1) * (L - 1) * 2 * T * H * D * (D + 1),
        "memory update (fp32)": n_seg * L * (2 * T * Hkv * D * D + T * Hkv * D),
    }
    t = Table(f"Where the time of an ingest goes ({segments} segments of {T} tokens, {_shape(cfg)}, {DT})",
              ["part", "seconds", "share", "TFLOP/s", f"of {DT} rate alongside"])
    for name, secs in sorted(times.items(), key=lambda kv: -kv[1]):
        f = flops.get(name)
        t.rows.append([name, secs, _pct(secs / wall), f / secs / 1e12 if f else "—",
                       _pct(f / secs / 1e12 / rate) if f else "—"])
    rest = wall - sum(times.values())
    t.rows.append(["rest: embedding, write_only glue, memory sums, Python", rest, _pct(rest / wall), "—", "—"])
    t.rows.append(["total (wall)", wall, "100%", ingest_flops(cfg, n_seg * T) / wall / 1e12,
                   _pct(ingest_flops(cfg, n_seg * T) / wall / 1e12 / rate)])
    t.notes.append(f"{DT} rate alongside: {rate:.3g} TFLOP/s (2048² products just before and after); CPU "
                   f"pressure during the run {_pct(pressure)} (other programs waiting for a core). "
                   f"{n_seg * T / wall:,.0f} tokens/s. Exclusive times: a part's time excludes the timed "
                   "parts inside it.")
    md = t.markdown()
    if prof_table:
        md += "\n### torch.profiler, operators by self CPU time (same segments, run again)\n\n"
        md += "```\n" + prof_table + "```\n"
    return md


# ---- main ----


def run(opts: Options, command: str | None = None) -> str:
    """The whole report as markdown."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    tables, peak = peak_section(opts)
    if "random" in opts.sections:
        tables += random_section(opts, peak)
    if "builtin" in opts.sections:
        tables += builtin_section(opts, peak)
    if "peers" in opts.sections:
        tables += peers_section(opts, peak)
    if "llama" in opts.sections or "peers" in opts.sections:
        tables += llama_section(opts)
    if "adapters" in opts.sections or opts.adapters:
        tables += adapters_section(opts, peak)
    head = ["## Benchmark", ""]
    if command:
        head += ["```", command, "```", ""]
    head += [f"Machine: {machine()}.", ""]
    notes = ["### How these tables are measured", ""] + [f"- {n}" for n in SPEED_NOTES + MEMORY_NOTES]
    body = "\n".join(t.markdown() for t in tables)
    return "\n".join(head) + body + ("\n" + "\n".join(notes) + "\n" if len(tables) > 1 else "")


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(","))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="random",
                   help="comma-separated: random, builtin, peers, llama, adapters (default random)")
    p.add_argument("--lengths", type=_ints, help="token counts for random and builtin (default 8192,32768,131072)")
    p.add_argument("--peer-lengths", type=_ints, default=(8192,), help="token counts for peers (default 8192)")
    p.add_argument("--decode-tokens", type=int, default=64, help="new tokens for the decode rate (default 64)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4K tokens, short matmul measurements")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to this long for the other programs to leave the cores")
    p.add_argument("--adapters", help="comma-separated adapter files, measured beside the built-in model with its "
                   "shipped adapter (the adapters section; use --sections adapters for that alone)")
    p.add_argument("--repeats", type=int, default=2,
                   help="alternating runs of each in the adapters and llama sections (default 2)")
    p.add_argument("--out", help="also write the markdown to this file")
    p.add_argument("--profile", type=int, metavar="SEGMENTS", help="time the parts of an ingest and exit")
    p.add_argument("--profile-ops", type=int, default=0, metavar="N", help="with --profile: top N operators")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    command = "python -m lab.bench " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    if a.profile:
        if a.wait_quiet:
            wait_quiet(a.wait_quiet, log)
        md = f"```\n{command.strip()}\n```\n\nMachine: {machine()}.\n\n"
        md += profile(a.profile, ops=a.profile_ops)
    else:
        opts = Options(
            lengths=a.lengths or (QUICK_LENGTHS if a.quick else DEFAULT_LENGTHS),
            sections=tuple(s.strip() for s in a.sections.split(",")), peer_lengths=a.peer_lengths,
            decode_tokens=8 if a.quick and a.decode_tokens == 64 else a.decode_tokens, quick=a.quick,
            threads=a.threads, wait_quiet=a.wait_quiet, log=log,
            adapters=tuple(x for x in (a.adapters or "").split(",") if x), repeats=a.repeats,
        )
        md = run(opts, command.strip())
    print(md)
    if a.out:
        Path(a.out).write_text(md)


if __name__ == "__main__":
    main()
