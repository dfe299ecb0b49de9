"""Decode speed of the int8 step with engine/quant.py's settings ("new") beside the step before the
outlier decomposition ("old": no outliers, SmoothQuant α 0.6 everywhere but q/k/v) and the exact
step, one thread, the machine's dtype: the three interleaved token by token (so that the machine's
drift falls on all alike), 4 × 96 greedy tokens after a short prompt.

    python -m lab.quant_speed [SPEC]    # SPEC as lab.quant_ppl's, applied to "new"
"""

import sys
import time

import torch

from infini_reader.app.core import models
from infini_reader.engine import quant
from infini_reader.engine.generate import Stream


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    e = models.load_model("builtin", device="cpu")
    guard = torch.inference_mode()
    guard.__enter__()
    ranges = quant.input_ranges(e.model, e.calibration_ids)
    a0, o0 = dict(quant.ALPHA), dict(quant.OUTLIERS)

    def make(outliers, alpha):
        quant.OUTLIERS.update(outliers)
        quant.ALPHA.update(alpha)
        try:
            return quant.Int8Decoder(e.model, e.calibration_ids, ranges)
        finally:
            quant.OUTLIERS.update(o0)
            quant.ALPHA.update(a0)

    new_k, new_a = {}, {}
    for kv in (argv[0].split(",") if argv else []):
        k, v = kv.split("=")
        if k.startswith("a_"):
            new_a[k[2:]] = float(v)
        else:
            new_k[k] = int(v)
    old = make(dict.fromkeys(quant.PRODUCTS, 0), {"down": 0.6})
    paths = {"exact": None, "int8_old": old, "int8_new": make(new_k, new_a)}
    prompt = e.prompt_ids("Tell me a story about a lighthouse keeper and his cat.").clone()
    n, reps, total = 96, 4, dict.fromkeys(paths, 0.0)
    for _ in range(reps):
        streams = {k: Stream(e.model, None, d) for k, d in paths.items()}
        logits = {k: s.feed(prompt) for k, s in streams.items()}
        for t in range(n):
            for k in (list(paths) if t % 2 else list(paths)[::-1]):
                t0 = time.perf_counter()
                logits[k] = streams[k].feed(logits[k].argmax().view(1))
                total[k] += time.perf_counter() - t0
    ms = {k: 1000 * v / (reps * n) for k, v in total.items()}
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, {e.dtype}, 1 thread; "
          f"new: outliers {dict(o0, **new_k)}, alpha {dict(a0, **new_a)}")
    print("ms a token: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    print(f"tokens/s int8_new / int8_old {ms['int8_old'] / ms['int8_new']:.3f}; "
          f"int8_new / exact {ms['exact'] / ms['int8_new']:.2f}; int8_old / exact {ms['exact'] / ms['int8_old']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
