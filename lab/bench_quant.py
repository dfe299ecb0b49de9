"""One token's products at the built-in model's shapes: float32 beside PyTorch's quantized CPU kernels.

    python -m lab.bench_quant [--threads 2]
    python -m lab.bench_quant --decode [--threads 2]    # the int8 decode path (engine/quant.py) beside exact

Rows: the vocabulary head and the MLP's products, one row of activations (a decoded token). Columns:
float32; weight-only int4 from Q4_1-style blocks of 32 (`_weight_int4pack_mm_for_cpu`, exact: a Q4_1
weight d·q + m is scale d and zero m + 8d around q − 8); weight-only int8 per channel
(`_weight_int8pack_mm`); fbgemm's dynamic int8 (`quantize_dynamic`). Each cell is float32's time over
the kernel's (above 1: faster), best of 5 alternated rounds of 20 calls; the relative error of each
kernel's output against float32 follows. docs/performance.md, "Quantized matmuls tried for decoding".
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn as nn

SHAPES = {"vocabulary head": (49152, 576), "MLP up": (1536, 576), "MLP down": (576, 1536)}
GROUP = 32


def best_seconds(fns: dict, rounds: int = 5, calls: int = 20) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best


@torch.inference_mode()
def row(n: int, k: int) -> tuple[dict[str, float], dict[str, float]]:
    q4 = torch.randint(0, 16, (n, k), dtype=torch.int32)
    d = (torch.rand(n, k // GROUP) * 0.01 + 0.001).half().float()
    m = (torch.randn(n, k // GROUP) * 0.01).half().float()
    w = d.repeat_interleave(GROUP, 1) * q4 + m.repeat_interleave(GROUP, 1)  # what a Q4_1 block de-quantizes to
    x = torch.randn(1, k)
    packed4 = torch._convert_weight_to_int4pack_for_cpu(q4, 2)
    scales_zeros = torch.stack([d.t(), (m + 8 * d).t()], dim=-1).contiguous()  # (k / GROUP, n, 2)
    s8 = w.abs().amax(1) / 127
    w8 = torch.round(w / s8[:, None]).to(torch.int8)
    lin = nn.Linear(k, n, bias=False)
    lin.weight.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantization is deprecated in favour of torchao
        dyn = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
    fns = {
        "float32": lambda: x @ w.t(),
        "int4 (GGUF blocks)": lambda: torch._weight_int4pack_mm_for_cpu(x, packed4, GROUP, scales_zeros),
        "int8 weight-only": lambda: torch._weight_int8pack_mm(x, w8, s8),
        "fbgemm dynamic int8": lambda: dyn(x),
    }
    ref = fns["float32"]()
    err = {name: float((fn() - ref).abs().max() / ref.abs().max()) for name, fn in fns.items()}
    return best_seconds(fns), err


QUESTIONS = ("Name three colours.", "What is the capital of France?", "Write a short poem about the sea.",
             "Explain what a lighthouse is.", "Who wrote Hamlet?", "Give me two tips for sleeping well.",
             "What is 12 times 7?", "Describe a cat in one sentence.")


def held_out_text(books: int = 2, chars: int = 3000) -> list[str]:
    """Passages from the middle of the first held-out books (../shared/data/gutenberg/valid.jsonl.xz)."""
    import json
    import lzma
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg" / "valid.jsonl.xz"
    out = []
    with lzma.open(path, "rt") as f:
        for line in f:
            text = json.loads(line)["text"]
            mid = len(text) // 2
            out.append(text[mid : mid + chars])
            if len(out) == books:
                break
    return out


def decode_report(tokens: int = 128, new_tokens: int = 32, rounds: int = 3) -> str:
    """The built-in model (shipped adapter, the machine's dtype): the int8 decode path beside the exact
    one. Perplexity of `tokens` held-out tokens fed one at a time after an 8-token prompt (teacher
    forcing: each token's logits from the one-token step); greedy answers to QUESTIONS; decode
    tokens/s alternated `rounds` times."""
    import math

    from infini_reader.app.core import models
    from infini_reader.engine.generate import Stream, generate_ids

    e = models.load_model("builtin", device="cpu")
    guard = torch.inference_mode()
    guard.__enter__()  # for the rest of this function (kept alive by the name)
    t = time.perf_counter()
    fast = e.int8_decoder()
    lines = [f"model dtype {e.dtype}, int8 weights prepared in {time.perf_counter() - t:.2f} s", ""]
    nll = {"exact": [], "int8": []}
    for text in held_out_text():
        ids = torch.tensor(e.tokenizer.encode(text, add_special_tokens=False).ids[: tokens + 8])
        for mode in nll:
            s = Stream(e.model, None, fast if mode == "int8" else None)
            logits = s.feed(ids[:8])
            for tok in ids[8:]:
                nll[mode].append(float(torch.log_softmax(logits, -1)[tok].neg()))
                logits = s.feed(tok.view(1))
    ppl = {m: math.exp(sum(v) / len(v)) for m, v in nll.items()}
    lines += [f"perplexity over {len(nll['exact'])} held-out tokens (one-token steps): exact {ppl['exact']:.3f}, "
              f"int8 {ppl['int8']:.3f} ({100 * (ppl['int8'] / ppl['exact'] - 1):+.2f}%)", ""]
    same, agree, total, speed = 0, 0, 0, {"exact": [], "int8": []}
    for i, q in enumerate(QUESTIONS):
        p = e.prompt_ids(q)
        answers = {}
        for mode in ("exact", "int8") if i % 2 == 0 else ("int8", "exact"):
            t = time.perf_counter()
            answers[mode] = list(generate_ids(e.model, p, None, new_tokens, decode=mode))
            if i < rounds * 2:
                speed[mode].append(len(answers[mode]) / (time.perf_counter() - t))
        a, b = answers["exact"], answers["int8"]
        same += a == b
        n = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        agree, total = agree + n, total + len(a)
    lines += [f"greedy answers ({new_tokens} tokens) identical: {same} of {len(QUESTIONS)}; tokens before the first "
              f"difference: {agree} of {total}", ""]
    lines += ["decode tokens/s (prompt included), alternated: " + "; ".join(
        f"{m} {', '.join(f'{x:.1f}' for x in v)}" for m, v in speed.items())
        + f"; median ratio int8 / exact {sorted(speed['int8'])[len(speed['int8']) // 2] / sorted(speed['exact'])[len(speed['exact']) // 2]:.2f}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab.bench_quant", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode", action="store_true", help="the int8 decode path beside the exact one (built-in model)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.decode:
        print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}\n", flush=True)
        print(decode_report(), flush=True)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    header = ["product (rows × cols)", "float32", "int4 (GGUF blocks)", "int8 weight-only", "fbgemm dynamic int8"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, (n, k) in SHAPES.items():
        secs, err = row(n, k)
        cells = [f"{secs['float32'] / secs[c]:.2f}× (err {err[c]:.1e})" for c in header[2:]]
        print(f"| {name} {n:,} × {k:,} | 1 ({secs['float32'] * 1e3:.2f} ms) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
