"""Books an hour with 1, 2, … local workers: `infini ingest --workers N FOLDER` timed side by side.

    python -m lab.bench_scale --books 4 --tokens 4000 --workers 1,2 --rounds 2 --out lab/runs/scale.json

Makes BOOKS plain-text books of about TOKENS tokens each from Alice's Adventures in Wonderland (the
EPUB in ../shared/fixtures, through the readers), then, for each round and each worker count in turn
(the order alternates between rounds), reads them into a fresh SQLite library with the real command
line and the built-in model, and reports the wall time (model loading included), books an hour,
tokens a second over the wall time, tokens a second while reading (the books' own reading
seconds), and tokens per CPU second of the command and its workers (the figure other programs on
the machine change least). The CPU flags and the load average go beside every figure: on a shared machine only the
ratios within one run mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALICE = ROOT.parent / "shared" / "fixtures" / "omni-alice-in-wonderland.epub"


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text()
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted(wanted & set(line.split()))


def make_books(folder: Path, books: int, tokens: int) -> None:
    from infini_reader.app.core.readers import read_document

    text = read_document(ALICE).text
    chars = tokens * 4  # about 4 characters a token with the built-in tokenizer
    for b in range(books):
        start = (b * chars) % max(1, len(text) - chars)
        (folder / f"book-{b + 1:02d}.txt").write_text(f"Book {b + 1}\n\n" + text[start:start + chars], encoding="utf-8")


def run_once(folder: Path, workers: int, extra: list[str]) -> dict:
    from infini_reader.app.core.library import Library

    with tempfile.TemporaryDirectory(prefix="infini-scale-") as data:
        load_before = os.getloadavg()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "infini_reader.app.cli", "--data-dir", data, *extra, "ingest",
                            "--workers", str(workers), "--quiet", "--yes", "--json", str(folder)],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its worker processes
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if p.returncode != 0:
            raise SystemExit(f"ingest failed: {p.stderr[-2000:]}")
        results = json.loads(p.stdout)
        infos = Library(f"sqlite:///{data}/library.sqlite3").infos()
    tokens = sum(r["tokens_done"] for r in results)
    reading_s = sum(i.seconds for i in infos)
    return {"workers": workers, "books": len(results), "tokens": tokens, "wall_s": round(wall, 1),
            "books_per_hour": round(len(results) / wall * 3600, 1), "tokens_per_s_wall": round(tokens / wall, 1),
            # each worker's reading seconds add up: the machine's rate while reading is tokens over their mean
            "tokens_per_s_reading": round(tokens / (reading_s / workers), 1) if reading_s else None,
            # CPU seconds of the command and its workers: what contention from other programs changes least
            "cpu_s": round(cpu, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--books", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4000, help="about this many tokens a book")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="infini-books-") as folder:
        make_books(Path(folder), args.books, args.tokens)
        for r in range(args.rounds):
            for w in (counts if r % 2 == 0 else counts[::-1]):
                row = run_once(Path(folder), w, ["--model", args.model, "--device", args.device]) | {"round": r}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"cpu_flags": cpu_flags(), "cores": len(os.sched_getaffinity(0)), "book_tokens": args.tokens,
           "dtype_env": {k: os.environ.get(k) for k in ("INFINI_DTYPE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")},
           "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))


if __name__ == "__main__":
    main()
