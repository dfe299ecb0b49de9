"""Perplexity of the int8 one-token step against the exact one, on held-out books (teacher forcing:
each token's logits from the one-token step), 200 tokens from the middle of each book (8 prompt + 192
scored), one thread. Used to choose engine/quant.py's settings (docs/performance.md, "What int8 costs
in quality").

    SET=dev  python -m lab.quant_ppl SPEC...    # valid.jsonl.xz books 16-29: where settings are chosen
    SET=test python -m lab.quant_ppl SPEC...    # books 3-15: reported once

SPEC: comma-separated settings over engine/quant.py's defaults: `down=16` (OUTLIERS, per product),
`a_down=0.4` (ALPHA), `base` (no outliers anywhere). The exact step's losses are kept in lab/runs/i8/.
"""

import math
import os
import sys
import time

import torch

from infini_reader.app.core import models
from infini_reader.engine import quant
from infini_reader.engine.generate import Stream

from .bench_quant import held_out_text


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    e = models.load_model("builtin", device="cpu", dtype="float32")
    guard = torch.inference_mode()
    guard.__enter__()
    which = os.environ.get("SET", "dev")
    texts = held_out_text(books=30)[16:] if which == "dev" else held_out_text(books=16)[3:]
    seqs = [torch.tensor(e.tokenizer.encode(t, add_special_tokens=False).ids[:200]) for t in texts]

    def nlls(fast):
        out = []
        for ids in seqs:
            s = Stream(e.model, None, fast)
            lg = s.feed(ids[:8])
            for tok in ids[8:]:
                out.append(-float(torch.log_softmax(lg, -1)[tok]))
                lg = s.feed(tok.view(1))
        return torch.tensor(out)

    cap = torch.backends.cpu.get_cpu_capability()
    cache = f"lab/runs/i8/exact-{which}-{cap}.pt"
    if os.path.exists(cache):
        base = torch.load(cache)
    else:
        base = nlls(None)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        torch.save(base, cache)
    print(f"SET={which} exact ppl {math.exp(base.mean()):.3f} tokens {len(base)} books {len(seqs)} "
          f"capability {cap}", flush=True)
    ranges = quant.input_ranges(e.model, e.calibration_ids)
    a0, o0 = dict(quant.ALPHA), dict(quant.OUTLIERS)
    for spec in argv:
        quant.ALPHA.update(a0)
        quant.OUTLIERS.update(o0)
        for kv in spec.split(","):
            if kv == "base":
                quant.OUTLIERS.update(dict.fromkeys(quant.PRODUCTS, 0))
                continue
            k, v = kv.split("=")
            if k.startswith("a_"):
                quant.ALPHA[k[2:]] = float(v)
            else:
                quant.OUTLIERS[k] = int(v)
        t = time.time()
        d = quant.Int8Decoder(e.model, e.calibration_ids, ranges)
        n = nlls(d)
        diff = n - base
        rel = 100 * (math.exp(n.mean()) / math.exp(base.mean()) - 1)
        print(f"{spec:40s} ppl {rel:+.2f}% (Δ {diff.mean():.4f} ± {diff.std() / len(diff) ** 0.5:.4f}) "
              f"[k {quant.OUTLIERS} a {quant.ALPHA}] {time.time() - t:.0f}s", flush=True)
    quant.ALPHA.update(a0)
    quant.OUTLIERS.update(o0)


if __name__ == "__main__":
    main(sys.argv[1:])
