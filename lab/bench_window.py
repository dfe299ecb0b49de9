"""The window's start, as a user meets it: launch to a usable window, to the model ready, and the
first answer after the model is ready (issue 36, item 4), on a library that already holds a read book.

    .venv/bin/infini --data-dir D ingest ../shared/fixtures/omni-alice-in-wonderland.epub   # once
    .venv/bin/python -m lab.bench_window --data-dir D [--rounds 3]

Each round is a fresh process (the real MainWindow, offscreen unless QT_QPA_PLATFORM says otherwise,
the built-in model): the question is typed the moment the model is ready, as a user who was waiting
would. Prints a markdown table of each round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ("What did the drink in the little bottle taste like?", "Why did Alice cry so much that she made a pool?")


def one_round(data_dir: str, question: str) -> dict:
    t_launch = time.monotonic()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["INFINI_CONFIG_DIR"] = tempfile.mkdtemp(prefix="infini-bench-config-")
    from PySide6.QtWidgets import QApplication

    from infini_reader.app.core.models import ModelChoice, load_engine
    from infini_reader.app.ui.main_window import MainWindow

    app = QApplication([sys.argv[0]])
    window = MainWindow(lambda choice: load_engine(ModelChoice("builtin", "cpu")), data_dir=Path(data_dir))
    window.show()
    app.processEvents()
    t_shown = time.monotonic()

    def spin(cond, timeout: float) -> float:
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.005)
            if time.monotonic() - t0 > timeout:
                raise SystemExit("timed out")
        return time.monotonic()

    t_ready = spin(lambda: window.engine is not None and window.library is not None, 300)
    rows = spin(lambda: bool(window.library_pane.model.rows), 60)
    window.library_pane.select(window.library_pane.model.rows[0].doc_id)
    spin(lambda: window.chat.send.isEnabled(), 60)
    window.chat.question.setPlainText(question)
    n0 = len(window.chat.turns)  # the chat kept from earlier rounds
    t_ask = time.monotonic()
    window.chat.ask()
    t_first = spin(lambda: len(window.chat.turns) >= n0 + 2 and window.chat.turns[-1].role == "assistant"
                   and window.chat.turns[-1].content.strip() != "", 300)
    t_done = spin(lambda: not window.chat.busy, 300)
    answer = window.chat.turns[-1].content
    del rows
    return {"shown": t_shown - t_launch, "ready": t_ready - t_launch, "ask_after_ready": t_ask - t_ready,
            "first_text_after_ready": t_first - t_ready, "answer_after_ready": t_done - t_ready,
            "answer": answer[:120]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab.bench_window", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one round in this process (question index)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_round(args.data_dir, QUESTIONS[args.one])))
        return
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    print(f"CPU flags: {' '.join(f for f in flags if f.startswith(('avx', 'amx', 'fma')))}; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| round | question | window shown (s) | model ready (s) | first answer text after ready (s) | "
          "answer complete after ready (s) | answer |\n|---|---|---:|---:|---:|---:|---|")
    results = []
    for r in range(args.rounds * len(QUESTIONS)):
        q = r % len(QUESTIONS)
        out = subprocess.run([sys.executable, "-m", "lab.bench_window", "--data-dir", args.data_dir, "--one", str(q)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            print(f"| {r + 1} | failed: {out.stderr.strip().splitlines()[-1:]} |")
            continue
        d = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(d)
        print(f"| {r + 1} | {QUESTIONS[q][:40]}… | {d['shown']:.2f} | {d['ready']:.2f} | "
              f"{d['first_text_after_ready']:.2f} | {d['answer_after_ready']:.2f} | {d['answer'][:60]!r} |", flush=True)
    if results:
        med = {k: statistics.median(d[k] for d in results) for k in ("shown", "ready", "first_text_after_ready",
                                                                       "answer_after_ready")}
        print(f"\nMedians: window shown {med['shown']:.2f} s, model ready {med['ready']:.2f} s, first answer text "
              f"{med['first_text_after_ready']:.2f} s and answer complete {med['answer_after_ready']:.2f} s after ready.")


if __name__ == "__main__":
    main()
