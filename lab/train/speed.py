"""How fast the trainer goes with sequences side by side (`TrainConfig.batch`) and with activations
kept instead of recomputed (`TrainConfig.keep_activations`), measured in one process on the built-in
model: the same number of sequences per optimiser step for every variant, alternating, best of the
rounds; how many operators one optimiser step launches (the profiler's count), which batching
divides by B per sequence; and the step's peak memory. On a GPU a 135M model at batch 1 waits on
launches, not arithmetic (lab/NOTEBOOK.md, "The first GPU session"); on a CPU the products are
already large and batching gains little, while every recomputed segment costs its forward pass
again. Prints a markdown table; nothing asserts a timing.

    python -m lab.train.speed                                   # CPU: batches of 1, 2, 4 (4.5 min)
    python -m lab.train.speed --sizes 1 --keep 0,2 --segment-length 2048
    python -m lab.train.speed --sizes 1 --keep 0,2 --heads autograd,chunked --segment-length 2048 --sequences 1
    python -m lab.train.speed --device cuda --segment-length 2048 --sizes 1,4,8 --sequences 8
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from . import unroll as model_module
from lab.bench import _reset_peak, _status
from .trainer import TrainConfig, Trainer, threads_from_env


def operator_calls(t: Trainer) -> int:
    """Operators one optimiser step runs: kernels launched on a GPU, ATen calls on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = t.engine.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t.train_step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if cuda:
        return sum(e.count for e in events if e.self_device_time_total > 0)
    return sum(e.count for e in events if e.key.startswith("aten::"))


def peak_memory(t: Trainer) -> float:
    """MiB at the peak of one optimiser step: the GPU's allocations on CUDA, else the process's RSS
    (its high-water mark reset first, as lab.bench does; 0 where Linux's /proc is missing)."""
    if t.engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        t.train_step()
        return torch.cuda.max_memory_allocated() / 2**20
    _reset_peak()
    t.train_step()
    return _status("VmHWM") / 2**20


def measure(t: Trainer, variants: list[tuple], sequences: int, rounds: int = 2, log=print) -> list[dict]:
    """For each variant (batch size, segments whose activations are kept[, the loss head: "chunked",
    the vocabulary's logits made a chunk at a time and never kept, or "autograd", every logit kept
    for the backward pass as before]): the best time of an optimiser step of `sequences` sequences,
    its tokens, the operators it runs and its peak memory. Every variant starts from step 0 (the same
    examples for the same batch size); a warm-up round first."""
    variants = [tuple(v) + ("chunked",) * (3 - len(v)) for v in variants]
    if any(sequences % v[0] for v in variants):
        raise ValueError(f"{sequences} sequences a step do not split into batches of {[v[0] for v in variants]}")
    cuda = t.engine.device.type == "cuda"

    def setup(b: int, keep: int, head: str = "chunked") -> None:
        t.cfg.batch, t.cfg.accumulate, t.cfg.keep_activations, t.step = b, sequences // b, keep, 0
        model_module.CHUNKED_HEAD = head == "chunked"

    best = {v: (float("inf"), 1) for v in variants}
    for rnd in range(rounds + 1):  # round 0 warms up (allocator, kernels' autotuning)
        for v in variants:
            setup(*v)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rows = t.train_step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens = sum(r["tokens"] for r in rows)
            log(f"round {rnd}, batch {v[0]}, activations kept {v[1]}, {v[2]} head: {dt:.2f} s, {tokens:,} tokens",
                flush=True)
            if rnd and dt / tokens < best[v][0] / best[v][1]:
                best[v] = (dt, tokens)
    out = []
    for b, keep, head in variants:
        setup(b, keep, head)
        operators = operator_calls(t)
        setup(b, keep, head)
        dt, tokens = best[(b, keep, head)]
        out.append({"batch": b, "passes": sequences // b, "keep": keep, "head": head, "seconds": dt,
                    "tokens": tokens, "tokens_per_s": tokens / dt, "operators": operators, "peak_mib": peak_memory(t)})
    model_module.CHUNKED_HEAD = True
    return out


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| batch × passes | activations kept | loss head | tokens a step | step (s) | tokens/s | × first row "
             "| operators a step | operators a sequence | peak memory (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seqs = r["batch"] * r["passes"]
        lines.append(f"| {r['batch']} × {r['passes']} | {r['keep']} | {r.get('head', 'chunked')} | {r['tokens']:,} "
                     f"| {r['seconds']:.2f} "
                     f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['operators']:,} "
                     f"| {r['operators'] // seqs:,} | {r['peak_mib']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.train.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--segment-length", type=int, default=512)
    p.add_argument("--memory-segments", type=int, default=1, help="segments in the memory before the scored one")
    p.add_argument("--sizes", default="1,2,4", help="batch sizes, comma-separated (the first is the baseline)")
    p.add_argument("--keep", default="0", help="segments whose activations are kept, comma-separated (each with each size)")
    p.add_argument("--heads", default="chunked",
                   help="loss heads, comma-separated: chunked (logits never kept), "
                        "autograd (every logit kept, as before)")
    p.add_argument("--sequences", type=int, default=4, help="sequences per optimiser step")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--task", default="lm")
    a = p.parse_args(argv)
    threads_from_env()
    cfg = TrainConfig(out=tempfile.mkdtemp(prefix="infini-speed-"), device=a.device, mix={a.task: 1.0},
                      segment_length=a.segment_length, memory_segments=(a.memory_segments, a.memory_segments),
                      truncate=a.task.startswith("passkey"), seed=3, warmup=1)
    t = Trainer(cfg)
    variants = [(int(b), int(k), h)
                for b in a.sizes.split(",") for k in a.keep.split(",") for h in a.heads.split(",")]
    rows = measure(t, variants, a.sequences, a.rounds)
    print(f"\n{a.task}, segments of {t.engine.config.segment_length} tokens ({a.memory_segments} in the memory), "
          f"{a.sequences} sequences a step, {t.engine.device} ({t.engine.dtype}), best of {a.rounds}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
