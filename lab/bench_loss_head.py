"""A training step of the built-in model with the loss head over every position of a scored segment
(`before`, the code until 2026-11-30) and over the scored positions only (`after`, engine/model.py
`_segment_loss` now), alternating in one process on the same examples, three rounds; prints the best
of each and their ratio. `.venv/bin/python lab/bench_loss_head.py [TASK]` (default passkey;
about 5 min on two cores). Recorded in docs/performance.md. The optimiser steps between rounds, so
the losses printed differ a little from round to round; the work per step does not."""

import sys
import tempfile
import time

import torch.nn.functional as F

from infini_reader.engine.model import InfiniTransformer, add_delta
from lab.train.trainer import TrainConfig, Trainer

AFTER = InfiniTransformer._segment_loss


def before(self, idx, targets, *mem_flat):
    """The loss head as it was: the vocabulary's logits at every position, the unscored ignored."""
    mem = list(zip(mem_flat[0::2], mem_flat[1::2])) if mem_flat else None
    h, deltas = self.segment(idx, mem)
    logits = self.lm_head(h).float()
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return (loss, *[t for pair in add_delta(mem, deltas) for t in pair])


def main(task: str = "passkey") -> None:
    t = Trainer(TrainConfig(out=tempfile.mkdtemp(), mix={task: 1.0}, memory_segments=(2, 2), truncate=True,
                            grad_tail=1, accumulate=2, seed=5,
                            init="lab/runs/cpu-memory-wide/adapter.safetensors"))
    times: dict[str, list[float]] = {"before": [], "after": []}
    for rnd in range(3):
        for name, fn in (("before", before), ("after", AFTER)):
            InfiniTransformer._segment_loss = fn
            t.step = 0  # the same examples every time
            t0 = time.perf_counter()
            rows = t.train_step()
            times[name].append(time.perf_counter() - t0)
            print(f"{name} {rnd}: {times[name][-1]:.2f} s, losses {[round(r['loss'], 4) for r in rows]}", flush=True)
    b, a = min(times["before"]), min(times["after"])
    print("| task | tokens a step | before (s) | after (s) | after / before |\n| --- | --- | --- | --- | --- |")
    print(f"| {task} | {sum(r['tokens'] for r in rows):,} | {b:.2f} | {a:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
