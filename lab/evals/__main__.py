"""`python -m lab.evals needle|spans|qa|retrieval|indexing|summary|passkey|ppl|chat|distance [options]`: prints markdown tables,
writes the results as JSON with `--out FILE.json`."""

from __future__ import annotations

import argparse
import sys


def build_parser(model: str = "builtin", device: str = "cpu") -> argparse.ArgumentParser:
    from . import chat, distance, indexing, needle, passkey, ppl, qa, retrieval, spans, summary

    p = argparse.ArgumentParser(prog="python -m lab.evals", description="Measure the reader and its model: needle, qa, summary, passkey, ppl, chat, distance.")
    cmds = p.add_subparsers(dest="eval", required=True, metavar="EVAL")
    for name, mod, text in (
        ("needle", needle, "planted facts in long books"),
        ("spans", spans, "span answers read out of re-read sentences (development facts), retrieval left out"),
        ("qa", qa, "FairytaleQA questions, ROUGE-L"),
        ("summary", summary, "SQuALITY plot summaries, ROUGE-1/2/L"),
        ("passkey", passkey, "the paper's passkey grid, 32K to 1M tokens"),
        ("ppl", ppl, "perplexity per segment on held-out books, memory on and shut"),
        ("chat", chat, "short-context instructions, base model against the adapted one"),
        ("retrieval", retrieval, "passages found for FairytaleQA train questions: the fusion's weights"),
        ("indexing", indexing, "time to split, full-text index and embed a long book, then the first answer"),
        ("distance", distance, "KL from a teacher adapter on book text and the check's answers"),
    ):
        c = cmds.add_parser(name, help=text, description=(mod.__doc__ or "").strip().split("\n\n")[0])
        c.add_argument("--model", default=model, help="builtin (default), a GGUF file or a model folder")
        c.add_argument("--device", default=device, choices=["auto", "cpu", "cuda"])
        c.add_argument("--adapter", default="auto",
                       help="auto (the shipped adapter on the built-in model), none, or an adapter file")
        c.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
        c.add_argument("--out", metavar="FILE.json", help="write the results here")
        mod.add_arguments(c)
        c.set_defaults(func=mod.run)
    return p


def main(argv: list[str] | None = None, model: str = "builtin", device: str = "cpu") -> int:
    import torch

    args = build_parser(model, device).parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:  # on a busy machine one thread beats two fighting over the cores
        torch.set_num_threads(args.threads)
    try:
        result = args.func(args)
    finally:
        torch.set_num_threads(threads)
    for table in result.get("tables", []):
        print(table.markdown())
        print()
    secs = result.get("seconds")
    if secs is not None:
        print(f"({secs / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
