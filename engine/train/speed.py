"""How fast the trainer goes with sequences side by side (`TrainConfig.batch`), measured in one
process on the built-in model: the same number of sequences per optimiser step, drawn one by one
(batch 1, `accumulate` passes) or in batches (fewer passes of B each), alternating, best of the
rounds; and how many operators one optimiser step launches (the profiler's count), which batching
divides by B per sequence. On a GPU a 135M model at batch 1 waits on launches, not arithmetic
(docs/training.md, "The first GPU session"); on a CPU the products are already large and batching
gains little. Prints a markdown table; nothing asserts a timing.

    python -m engine.train.speed                          # CPU: segments of 512, 4 sequences a step (~6 min)
    python -m engine.train.speed --device cuda --segment-length 2048 --sizes 1,4,8 --sequences 8
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

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


def measure(t: Trainer, sizes: tuple[int, ...], sequences: int, rounds: int = 2, log=print) -> list[dict]:
    """For each batch size: the best time of an optimiser step of `sequences` sequences, its tokens
    and operator calls. Every size starts from step 0 (the same schedule); a warm-up step first."""
    if any(sequences % b for b in sizes):
        raise ValueError(f"{sequences} sequences a step do not split into batches of {sizes}")
    cuda = t.engine.device.type == "cuda"
    best = {b: (float("inf"), 0) for b in sizes}
    for rnd in range(rounds + 1):  # round 0 warms up (allocator, kernels' autotuning)
        for b in sizes:
            t.cfg.batch, t.cfg.accumulate, t.step = b, sequences // b, 0
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rows = t.train_step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens = sum(r["tokens"] for r in rows)
            log(f"round {rnd}, batch {b}: {dt:.2f} s, {tokens:,} tokens", flush=True)
            if rnd and dt / tokens < best[b][0] / max(1, best[b][1]):
                best[b] = (dt, tokens)
    out = []
    for b in sizes:
        t.cfg.batch, t.cfg.accumulate, t.step = b, sequences // b, 0
        dt, tokens = best[b]
        out.append({"batch": b, "passes": sequences // b, "seconds": dt, "tokens": tokens,
                    "tokens_per_s": tokens / dt, "operators": operator_calls(t)})
    return out


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| batch × passes | tokens a step | step (s) | tokens/s | × batch " + str(base["batch"]) +
             " | operators a step | operators a sequence |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seqs = r["batch"] * r["passes"]
        lines.append(f"| {r['batch']} × {r['passes']} | {r['tokens']:,} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} "
                     f"| {r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['operators']:,} | {r['operators'] // seqs:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.train.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--segment-length", type=int, default=512)
    p.add_argument("--memory-segments", type=int, default=1, help="segments in the memory before the scored one")
    p.add_argument("--sizes", default="1,2,4", help="batch sizes, comma-separated (the first is the baseline)")
    p.add_argument("--sequences", type=int, default=4, help="sequences per optimiser step")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--task", default="lm")
    a = p.parse_args(argv)
    threads_from_env()
    cfg = TrainConfig(out=tempfile.mkdtemp(prefix="infini-speed-"), device=a.device, mix={a.task: 1.0},
                      segment_length=a.segment_length, memory_segments=(a.memory_segments, a.memory_segments),
                      truncate=a.task.startswith("passkey"), seed=3, warmup=1)
    t = Trainer(cfg)
    rows = measure(t, tuple(int(x) for x in a.sizes.split(",")), a.sequences, a.rounds)
    print(f"\n{a.task}, segments of {t.engine.config.segment_length} tokens ({a.memory_segments} in the memory), "
          f"{a.sequences} sequences a step, {t.engine.device} ({t.engine.dtype}), best of {a.rounds}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
