#!/usr/bin/env python3
"""A training run on a lent GPU machine that has no network, takes the working tree in calls of at
most 64 MiB and runs each command for at most 10 minutes (this workplace's device tool; any offline
GPU box fed by hand works the same way). Three verbs:

    .venv/bin/python lab/gpu_session.py pack RECIPE [--chat FILE]  # here: .gpu/1 … .gpu/N, the calls to make
    python3 lab/gpu_session.py stage                               # there, calls 1 … N-1 (carry .gpu/K)
    python3 lab/gpu_session.py train --minutes M                   # there, the last call: train, evaluate → $OUT

`pack` splits the built-in model's GGUF file (98 MB) into pieces that fit beside the checkout, and
adds the data the recipes and the evaluations read (`../shared/data`: one Gutenberg shard, the
held-out books, FairytaleQA, bAbI), the self-distilled chat file and the wheels of the Python
packages the machine's image lacks. `stage` moves what a call brought into a folder outside the
checkout (`~/infini-gpu`), which lives as long as the machine stays warm. `train` checks that the
model's pieces rebuild the file (SHA-256), installs the wheels, compares the Triton kernels with
the PyTorch path on one training step (and takes the PyTorch path if they disagree or fail), runs
`python -m lab.train --config RECIPE --device cuda --minutes M`, evaluates the adapter (passkeys
at 32K, perplexity, instructions) and leaves the adapter, the log, the plot and the tables in $OUT.
lab/NOTEBOOK.md, "A run on a lent GPU", says how a session uses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from lab.train.unroll import forward_train

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / ".gpu"
LIMIT = 64 * 2**20  # what one call carries: the checkout and the carried folders together
MARGIN = 2 * 2**20
DATA_FILES = ("gutenberg/train-000.jsonl.xz", "gutenberg/valid.jsonl.xz", "fairytaleqa/train.jsonl.xz",
              "fairytaleqa/val.jsonl.xz", "babi/en-10k-train.txt.xz")
# importable here, missing from the machine's image (its torch, numpy, tokenizers, safetensors,
# triton, matplotlib, pyyaml, regex, click, joblib, tqdm are used as they are)
WHEELS = ("gguf", "platformdirs", "SQLAlchemy", "rouge_score", "nltk", "defusedxml")
# the passkeys' ten keys of a depth read side by side (`--batch`: one pass for ten haystacks on a GPU)
EVALS = ("passkey --lengths 32K --keys 10 --batch 10; ppl --books 3 --segments 8; chat; "
         "passkey --lengths 128K --keys 10 --batch 10; passkey --lengths 1M --keys 10 --batch 10")


def stage_dir() -> Path:
    return Path(os.environ.get("INFINI_GPU_STAGE") or Path.home() / "infini-gpu")


def sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def tree_bytes() -> int:
    """What travels with every call besides the carried folders: tracked and untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return sum((ROOT / f).stat().st_size for f in out.split("\0") if f and (ROOT / f).is_file())


def wheels(into: Path) -> list[Path]:
    """The wheels of WHEELS at the versions installed here, for CPython 3.12 on x86-64 Linux; a
    package published only as source (rouge_score) is built into a wheel here."""
    from importlib.metadata import version

    into.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    for name in WHEELS:
        spec = f"{name}=={version(name)}"
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(into), spec],
                             capture_output=True, text=True)
        if got.returncode:  # source only
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), spec], check=True)
    return sorted(into.glob("*.whl"))


Folder = list[tuple[Path, str, int, int]]  # (source, path in the stage, offset, bytes)


def plan(files: list[tuple[Path, str]], model: Path, model_name: str, room: int) -> list[Folder]:
    """Folders of (source, path in the stage, offset, bytes), each at most `room` bytes: the first
    holds the small files and a first piece of the model, the others the rest of the model."""
    small = sum(src.stat().st_size for src, _ in files)
    if small > room:
        raise SystemExit(f"the data and wheels ({small / 2**20:.1f} MiB) do not fit beside the checkout in one call")
    size = model.stat().st_size
    folders = [[(src, dest, 0, src.stat().st_size) for src, dest in files]]
    at, piece, left = 0, 0, room - small
    while at < size:
        if left <= 0:
            folders.append([])
            left = room
        n = min(left, size - at)
        piece += 1
        folders[-1].append((model, f"model/{model_name}.part{piece:02d}", at, n))
        at, left = at + n, left - n
    return folders


def write(folders: list[Folder], into: Path, manifest: dict) -> None:
    if into.exists():
        shutil.rmtree(into)
    for k, items in enumerate(folders, 1):
        (into / str(k)).mkdir(parents=True)
        for src, dest, offset, n in items:
            out = into / str(k) / dest
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f:
                f.seek(offset)
                out.write_bytes(f.read(n))
    pieces = sum(1 for items in folders for _, dest, _, _ in items if dest.startswith("model/"))
    manifest = {**manifest, "pieces": pieces, "folders": len(folders)}
    (into / "1" / "manifest.json").write_text(json.dumps(manifest, indent=2))


def pack(args) -> int:
    from infini_reader.app.core.builtin import MODEL_FILE, MODEL_SHA256, builtin_path
    from lab.train.trainer import SHARED_DATA

    from lab.train.__main__ import parse as parse_recipe

    configs, _ = parse_recipe(["--config", args.recipe])  # a recipe that does not parse stops here, not there
    if any(c.mix.get("chat") for c in configs) and not args.chat:
        raise SystemExit(f"{args.recipe} trains on self-distilled instructions: give their file with --chat "
                         "(python -m lab.train.selfdistill --out lab/runs/chat.jsonl --n 160 writes one)")
    missing = [c.init for c in configs[:1] if c.init and not (ROOT / c.init).is_file()]
    if missing:
        raise SystemExit(f"{args.recipe} starts from {missing[0]}, which is not in the checkout")
    files: list[tuple[Path, str]] = [(SHARED_DATA / rel, f"data/{rel}") for rel in DATA_FILES]
    if args.chat:
        files.append((Path(args.chat), "chat.jsonl"))
    files += [(w, f"whl/{w.name}") for w in wheels(ROOT / "build" / "gpu-wheels")]
    tree = tree_bytes()
    folders = plan(files, builtin_path(), MODEL_FILE, LIMIT - tree - MARGIN)
    write(folders, PACK, {"model_file": MODEL_FILE, "model_sha256": MODEL_SHA256, "recipe": args.recipe})
    print(f"{len(folders)} calls, each carrying one folder beside a checkout of {tree / 2**20:.1f} MiB:")
    for k in range(1, len(folders) + 1):
        mib = sum(p.stat().st_size for p in (PACK / str(k)).rglob("*") if p.is_file()) / 2**20
        verb = "stage" if k < len(folders) else "train --minutes 5"
        print(f"  {k}. carry [\".gpu/{k}\"] ({mib:.1f} MiB): python3 lab/gpu_session.py {verb}")
    return 0


def stage(args=None, pack_dir: Path = PACK) -> Path:
    """Move what this call brought (.gpu/K) into the stage, where it stays while the machine is warm."""
    st = stage_dir()
    for folder in sorted(p for p in pack_dir.glob("*") if p.is_dir()):
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            dest = st / f.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), dest)
            print(f"staged {dest.relative_to(st)} ({dest.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return st


def stage_verb(args) -> int:
    stage()
    return 0


def assemble(st: Path) -> dict:
    """Rebuild the model file from its pieces (checked) and install the wheels into the stage."""
    manifest = json.loads((st / "manifest.json").read_text())
    model = st / "models" / manifest["model_file"]
    if not model.is_file():
        pieces = sorted((st / "model").glob(manifest["model_file"] + ".part*"))
        if len(pieces) != manifest["pieces"]:
            raise SystemExit(f"{len(pieces)} of the model's {manifest['pieces']} pieces are staged: "
                             "make the calls that carry the others first (the machine must stay warm between them)")
        if sha256(pieces) != manifest["model_sha256"]:
            raise SystemExit("the model's pieces do not rebuild the file (SHA-256 differs)")
        model.parent.mkdir(parents=True, exist_ok=True)
        with open(model.with_suffix(".tmp"), "wb") as out:
            for p in pieces:
                out.write(p.read_bytes())
        model.with_suffix(".tmp").rename(model)
    site = st / "site"
    if not site.exists():
        import importlib.util

        for whl in sorted((st / "whl").glob("*.whl")):
            got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                  "--no-compile", "--target", str(site), str(whl)], capture_output=True, text=True)
            module = whl.name.split("-")[0].lower()
            if got.returncode and importlib.util.find_spec(module) is None:
                raise SystemExit(f"{whl.name} does not install here and {module} is missing:\n{got.stderr}")
            if got.returncode:  # built for the device's Python; this one has the package already
                print(f"{whl.name}: not for this Python; using the installed {module}", flush=True)
    return manifest


def environment(st: Path) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", INFINI_MODEL_DIR=str(st / "models"),
               INFINI_SHARED_DATA=str(st / "data"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(st / "site"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def check(args) -> int:
    """One training micro-step of the built-in model with the Triton kernels and with the PyTorch
    path: prints `kernels: triton` when they agree (loss and every gradient within bf16 noise) and
    Triton is not slower, else `kernels: reference`, with the figures."""
    import torch

    from lab.train.trainer import TrainConfig, Trainer

    results = {}
    for mode in ("reference", "triton"):
        os.environ["INFINI_KERNELS"] = mode
        try:
            t = Trainer(TrainConfig(out=str(stage_dir() / "check"), device=args.device, mix={"lm": 1.0},
                                    memory_segments=(2, 2), seed=0))
            ex = t.data.example(0)
            ids = torch.tensor([ex.ids], device=t.engine.device)
            targets = torch.tensor([ex.targets], device=t.engine.device)
            with torch.no_grad():  # the same open gates in both, so the memory path counts
                for layer in t.model.model.layers:
                    layer.self_attn.memory_gate.fill_(-1.0)
            times = []
            for _ in range(3):
                t.opt.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                loss = forward_train(t.model, ids, targets)
                loss.backward()
                if t.engine.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            grads = {n: p.grad.float().cpu() for n, p in t.model.named_parameters() if p.grad is not None}
            results[mode] = (float(loss.detach()), grads, min(times[1:]))
            print(f"{mode}: loss {results[mode][0]:.5f}, step {min(times[1:]):.3f} s ({len(ex.ids)} tokens)",
                  flush=True)
        except Exception as e:  # a kernel that does not build or run here
            print(f"{mode}: failed: {type(e).__name__}: {e}", flush=True)
    ok = "triton" in results and "reference" in results
    if ok:
        (l0, g0, s0), (l1, g1, s1) = results["reference"], results["triton"]
        worst = max(float((g1[n] - g0[n]).norm() / g0[n].norm().clamp(min=1e-12)) for n in g0)
        print(f"triton against reference: loss {abs(l1 - l0):.2e} apart, gradients within {worst:.2e} (relative)")
        ok = abs(l1 - l0) < 2e-2 * abs(l0) and worst < 5e-2 and s1 <= s0
    print(f"kernels: {'triton' if ok else 'reference'}")
    os.environ["INFINI_KERNELS"] = "triton" if ok else "reference"  # what follows runs on the chosen path
    if results and (args.device == "cuda" or args.profile):
        profile(t, ids, targets)
    sizes = args.speed if args.speed is not None else ("1,8" if args.device == "cuda" else "")
    if results and sizes:  # sequences side by side (TrainConfig.batch): how much a step gains
        from lab.train import speed

        sizes = [int(x) for x in sizes.split(",")]
        # the first size with and without kept activations, the others with them (as the recipes run)
        variants = [(sizes[0], 0)] + [(b, 2) for b in sizes]
        rows = speed.measure(t, variants, max(sizes), rounds=1)
        print("book text, two segments in the memory and the scored one:\n" + speed.table(rows), flush=True)
    return 0


def profile(t, ids, targets, rows: int = 15) -> None:
    """Where one training micro-step's time goes on the GPU: the busiest operators and how much of
    the step the GPU was busy at all (a 135M model at batch 1 may leave it mostly idle)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = ids.is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t.opt.zero_grad(set_to_none=True)
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        forward_train(t.model, ids, targets).backward()
        sync()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6
    print(f"profile ({os.environ['INFINI_KERNELS']}): step {wall:.3f} s, GPU busy {busy:.3f} s ({busy / wall:.0%}), "
          f"{sum(e.count for e in events if e.self_device_time_total > 0):,} GPU operator calls", flush=True)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=rows, max_name_column_width=60), flush=True)


def run_logged(cmd: list[str], env: dict, log: Path, timeout: float) -> tuple[int, str]:
    print("$ " + " ".join(map(shlex.quote, cmd)), flush=True)
    text = []
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(shlex.quote, cmd)) + "\n")
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(timeout, p.kill)  # a silent hang is killed too
        watchdog.start()
        try:
            for line in p.stdout:
                f.write(line)
                f.flush()
                text.append(line)
                sys.stdout.write(line)
        finally:
            rc = p.wait()
            watchdog.cancel()
    return rc, "".join(text)


def train(args) -> int:
    t_start = time.monotonic()
    st = stage()
    manifest = assemble(st)
    args.recipe = args.recipe or manifest["recipe"]
    out = Path(os.environ.get("OUT") or st / "out")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train.log"
    env = environment(st)
    if args.kernels == "auto":
        _, text = run_logged([sys.executable, __file__, "check", "--device", args.device], env, log, 180)
        args.kernels = "triton" if "kernels: triton" in text else "reference"
    env["INFINI_KERNELS"] = args.kernels
    run = st / "run"
    extra = ["--chat-file", str(st / "chat.jsonl")] if (st / "chat.jsonl").is_file() else []
    cmd = [sys.executable, "-m", "lab.train", "--config", args.recipe, "--device", args.device,
           "--minutes", str(args.minutes), "--out", str(run), *extra, *shlex.split(args.train)]
    run_logged(cmd, env, log, args.minutes * 60 + 120)
    adapter = max(run.rglob("adapter.safetensors"), key=lambda p: p.stat().st_mtime, default=None)  # the last phase's
    if adapter is None:
        print("no adapter was written", flush=True)
        return 1
    folder = adapter.parent
    for name in ("adapter.safetensors", "log.csv", "loss.png"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    left = args.total_minutes * 60 - (time.monotonic() - t_start)
    results = {}
    for line in [e.strip() for e in args.evals.split(";") if e.strip()]:
        name = line.split()[0]
        name = next(n for n in (name, *(f"{name}-{k}" for k in range(2, 99))) if n not in results)
        if left < 30:
            print(f"no time left for eval {name}", flush=True)
            continue
        cmd = [sys.executable, "-m", "lab.evals", *shlex.split(line), "--device", args.device,
               "--adapter", str(adapter), "--out", str(st / f"eval-{name}.json")]
        results[name] = None  # not run to its end (killed on the time left) unless its table replaces this
        rc, text = run_logged(cmd, dict(env), log, left - 15)
        if rc and args.kernels == "triton":  # the inference kernels failing here: the PyTorch path
            rc, text = run_logged(cmd, dict(env, INFINI_KERNELS="reference"), log, left - 15)
        if (st / f"eval-{name}.json").is_file():
            results[name] = json.loads((st / f"eval-{name}.json").read_text())
        (out / "evals.json").write_text(json.dumps(results, indent=1))  # what is done comes back if the call is cut
        left = args.total_minutes * 60 - (time.monotonic() - t_start)
    (out / "evals.json").write_text(json.dumps(results, indent=1))
    print(f"done in {(time.monotonic() - t_start) / 60:.1f} min; in {out}: "
          + ", ".join(sorted(p.name for p in out.iterdir())), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab/gpu_session.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True)
    a = verbs.add_parser("pack", help="here: the folders to carry, one per call")
    a.add_argument("recipe", help="the recipe to run there (lab/recipes/…)")
    a.add_argument("--chat", help="the chat task's file (python -m lab.train.selfdistill writes one)")
    a.set_defaults(func=pack)
    verbs.add_parser("stage", help="there: keep what this call brought").set_defaults(func=stage_verb)
    c = verbs.add_parser("check", help="there: Triton kernels against the PyTorch path on one training step")
    c.add_argument("--device", default="cuda")
    c.add_argument("--profile", action="store_true", help="profile one step on the CPU too (always on CUDA)")
    c.add_argument("--speed", metavar="SIZES", help="batch sizes to time a step with (default on CUDA: 1,8)")
    c.set_defaults(func=check)
    t = verbs.add_parser("train", help="there, the last call: train, evaluate, results in $OUT")
    t.add_argument("recipe", nargs="?", help="a recipe (default: the one packed); its `out` becomes the stage's")
    t.add_argument("--minutes", type=float, default=5.0, help="training time (default 5)")
    t.add_argument("--total-minutes", type=float, default=9.0, help="all of it, evaluations included (default 9)")
    t.add_argument("--device", default="cuda")
    t.add_argument("--kernels", choices=["auto", "triton", "reference"], default="auto")
    t.add_argument("--evals", default=EVALS, help=f"`python -m lab.evals` command lines, ';' between (default: {EVALS})")
    t.add_argument("--train", default="", metavar="OPTIONS", help="more options for python -m lab.train, quoted")
    t.set_defaults(func=train)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
