"""`python -m lab.train [--config FILE.json] [--option value ...]`: train the memory gates and
LoRA factors of the built-in model (or another) and write the run's folder:

    checkpoint/          resumable state (safetensors + JSON); the run resumes from it by itself
    adapter.safetensors  what `engine.load_model(..., adapter=PATH)` applies; copy it to resources/
    log.csv, loss.png    loss per task and example, gates, tokens, time
    config.json          the options of the run

On a machine with a GPU the same command runs there (`--device cuda`, bf16). `--minutes M` fits the
command into M minutes of wall-clock (a machine lent by the hour): the phase the budget reaches has
its steps cut to end on time, and whatever is unfinished when the time is up is saved for the same
command to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .trainer import TrainConfig, Trainer, threads_from_env


def parse(argv: list[str] | None) -> tuple[list[TrainConfig], bool]:
    """The runs to make, in order, and whether to start afresh (`--fresh`: ignore checkpoints).

    A config file may hold `"phases"`: a list of option sets, each applied over the file's other
    options; phase i trains into `<out>/<i>-<name>` and starts from the adapter of the phase before
    (unless it names its own `init`). Flags given on the command line apply to every phase.
    """
    p = argparse.ArgumentParser(prog="python -m lab.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", help="a JSON file of options (and phases); flags given here override it")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, dict):
            p.add_argument(flag, type=json.loads, help=f"JSON (default {json.dumps(d)})")
        elif isinstance(d, tuple):
            p.add_argument(flag, help=f"comma-separated (default {','.join(map(str, d))})")
        elif isinstance(d, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {d})")
        elif d is None:
            p.add_argument(flag, type=float, help="(default: the model's own)")
        else:
            p.add_argument(flag, type=type(d), help=f"(default {d})")
    p.add_argument("--fresh", action="store_true", help="do not resume from the folder's checkpoint")
    args = p.parse_args(argv)
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    phases = base.pop("phases", None) or [{}]
    flags = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is None:
            continue
        if isinstance(getattr(defaults, f.name), tuple):
            kind = type(getattr(defaults, f.name)[0])
            v = tuple(kind(x) for x in v.split(","))
        flags[f.name] = v
    out = flags.get("out", base.get("out", defaults.out))
    configs = []
    for i, phase in enumerate(phases):
        phase = dict(phase)
        name = phase.pop("name", f"phase{i + 1}")
        opts = {**base, **phase, **flags}
        if len(phases) > 1:
            opts["out"] = str(Path(out) / f"{i + 1}-{name}")
            if i > 0 and "init" not in phase:
                opts["init"] = str(Path(configs[-1].out) / "adapter.safetensors")
        configs.append(TrainConfig.from_json(json.dumps(opts)))
    return configs, args.fresh


def main(argv: list[str] | None = None) -> int:
    configs, fresh = parse(argv)
    threads_from_env()
    budget = max(c.minutes for c in configs)
    deadline = time.monotonic() + budget * 60
    for cfg in configs:
        if budget:  # one budget for the whole command: each phase gets what the ones before left
            cfg.minutes = (deadline - time.monotonic()) / 60
            if cfg.minutes <= 0:
                print(f"time budget of {budget:g} min used up before {cfg.out}: the same command continues", flush=True)
                return 0
        trainer = Trainer(cfg)
        n = sum(p.numel() for p in trainer.params)
        print(f"training {n:,} parameters on {trainer.engine.device} ({trainer.engine.dtype}), segments of "
              f"{trainer.engine.config.segment_length} tokens, into {cfg.out}", flush=True)
        trainer.run(resume=not fresh)
        print(f"adapter: {Path(cfg.out) / 'adapter.safetensors'}", flush=True)
        if trainer.stopped_early:  # the next phase would start from an unfinished adapter
            return 0
        del trainer
    return 0


def with_huge_pages() -> None:
    """Run this command again with PyTorch's CPU allocations on transparent huge pages
    (`THP_MEM_ALLOC_ENABLE`, read once when torch allocates its first tensor, so it must be set before
    the process starts): a training step allocates and frees gigabytes of activations, and with
    4 KiB pages a sixth of it went to faulting them in (docs/performance.md). Inference does not gain,
    so only the trainer asks for it. `THP_MEM_ALLOC_ENABLE=0` keeps the default."""
    if "THP_MEM_ALLOC_ENABLE" not in os.environ:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "lab.train", *sys.argv[1:]])


if __name__ == "__main__":
    with_huge_pages()
    sys.exit(main())
