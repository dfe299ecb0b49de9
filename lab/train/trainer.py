"""The training loop: memory gates and LoRA factors of the attention projections, several segments
per sequence with gradients through the memory, bf16 weights (frozen) with float32 trainable
parameters and a float32 memory, gradient accumulation, resumable checkpoints, a CSV log and a plot.

A checkpoint is a folder: `trainable.safetensors` (gates and factors), `optimizer.safetensors`
(AdamW's moments), `rng.safetensors` and `state.json` (step, schedule, configuration). No pickle.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from infini_reader.engine.adapter import LoRALinear, add_lora, add_memory_projection, merge_lora, read_adapter, save_adapter
from infini_reader.engine.engine import Engine
from .unroll import forward_train, head_loss
from .data import DISTILLED, TASKS, TrainingData, collate
from infini_reader.app.core.models import builtin_adapter

# the data folder beside the checkout (../shared/data); INFINI_SHARED_DATA moves it, e.g. on a machine
# that receives the data apart from the checkout (lab/gpu_session.py)
SHARED_DATA = Path(os.environ.get("INFINI_SHARED_DATA")
                   or Path(__file__).resolve().parents[2].parent / "shared" / "data")


@dataclass
class TrainConfig:
    out: str = "lab/runs/train"  # the run's folder: checkpoints, log.csv, loss.png, adapter.safetensors
    model: str = "builtin"
    data: str = str(SHARED_DATA)
    steps: int = 300
    accumulate: int = 4  # forward passes per optimiser step (of `batch` sequences each)
    # sequences side by side in one forward pass (one task and layout, `TrainingData.batch`): a GPU
    # runs B of them in about the time of one, the operators being launched once for all; 1 draws the
    # examples one by one (`TrainingData.example`), as every run before it did
    batch: int = 1
    # the last k segments of a sequence that run with gradient keep their activations for the backward
    # pass instead of recomputing them (gradient checkpointing, the rest): the same gradients, a step
    # a fifth to a third shorter on this CPU, about a gigabyte more per kept segment of 2,048 tokens
    # (docs/performance.md, "Training: activations kept"); 0 recomputes every segment
    keep_activations: int = 2
    segment_length: int = 0  # 0: the model's own
    memory_segments: tuple[int, int] = (1, 3)  # whole segments before the scored one, drawn per example
    mix: dict = field(default_factory=lambda: {"lm": 0.2, "passkey": 0.3, "needle": 0.2, "qa": 0.3})
    rank: int = 8  # LoRA rank; 0 trains the gates only
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 2e-4  # LoRA factors
    gate_lr: float = 2e-2  # the gates move from -6 only with a larger step (DESIGN.md 3.7)
    gate_init: float | None = None  # start every β here instead of the model's value (e.g. -3)
    # after gate_init/init: every β below this goes back to the model's initial value (-6), keeping the
    # heads that learned to read the memory open and shutting the rest, whose read is still noise
    gate_shut_below: float | None = None
    # after init: every β below this is raised to it, so that heads whose memory read was shut get a
    # gradient large enough to open within a short run (σ'(−6) is 0.0025, σ'(−3) 0.045); heads above
    # it keep their value
    gate_floor: float | None = None
    # every β is held at or below this, at the start and after every step, so that each head keeps at
    # least 1 − sigmoid(cap) of its local attention (0: half); the memory's share of a head's output can
    # still grow through the memory projection of o, which acts on the read alone
    gate_cap: float | None = None
    weight_decay: float = 0.01  # LoRA factors only; never the gates
    warmup: int = 10
    clip: float = 1.0
    seed: int = 0
    save_every: int = 10
    device: str = "auto"
    dtype: str = "auto"  # engine.resolve_dtype: bf16 on CUDA and on CPUs where hardware bf16 measures faster, else float32
    books: int = 40  # books of the first Gutenberg shard used as text
    chat_file: str = ""  # the chat task's data (python -m lab.train.selfdistill)
    init: str = ""  # an adapter file to start from (its gates and factors), e.g. to continue a run
    # truncated back-propagation for long sequences: segments that hold neither what is scored nor
    # the passkey/fact run without gradient, their writes entering the memory as constants
    # (InfiniTransformer.forward_train, `constant`); the loss is unchanged, a step costs far less
    truncate: bool = False
    # with truncate: the last memory segments before the scored one that keep their gradient, so
    # that a story told in the memory and asked about (no needle, only the answer scored) also
    # learns what to write (0: none; book text is scored throughout and never constant)
    grad_tail: int = 0
    # the `passkey_far` task: the haystack lengths (tokens, drawn log-uniform) its examples stand for
    far_tokens: tuple[int, int] = (32_768, 1_048_576)
    # a wall-clock budget for this invocation (0: none), for a machine lent by the hour: the steps
    # are cut to what the budget allows once the first steps are timed (the schedule follows), and
    # when the time is up the run saves and stops; the same command continues it
    minutes: float = 0.0
    # distillation from a teacher: an adapter file for the same base model ("shipped": the built-in
    # adapter). Examples with no memory (`chat`, `text`) are then trained toward the teacher's
    # next-token distribution on their scored tokens (KL(teacher ‖ model)) instead of the one token
    # written: what the memory tasks may not change is held in place over the whole distribution
    teacher: str = ""
    # memory projections (model.py, `MemoryProjection`): low-rank corrections of q, k, v and o that
    # only the memory path sees, trained with the gates on top of fixed weights (needs rank 0): the
    # LoRA factors of `init` ("shipped": the built-in adapter) are merged, frozen and carried into
    # the saved adapter, so whatever the run learns, an empty memory answers as `init` did
    memory_rank: int = 0
    memory_alpha: float = 16.0
    # book text (`lm`) trained toward a teacher that reads each segment with the tokens before it in
    # one window of softmax attention, this many (0: off; 8,192 is SmolLM2's native window): the
    # weights of `teacher` (else of `init`, else the base model) with every gate shut. Where reading
    # the earlier text changes the next token's distribution, the memory is shown what it should
    # bring, over the whole vocabulary, instead of one sampled token (KL(teacher ‖ model) per token)
    context_teacher: int = 0

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        d = json.loads(text)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        for k in ("memory_segments", "targets", "far_tokens"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class Trainer:
    def __init__(self, cfg: TrainConfig, engine: Engine | None = None, data: TrainingData | None = None,
                 teacher: torch.nn.Module | None = None):
        from infini_reader.app.core.models import load_model

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        if engine is None:
            overrides = {"segment_length": cfg.segment_length} if cfg.segment_length else {}
            engine = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, adapter=None, **overrides)
        self.engine = engine
        self.model = engine.model
        add_lora(self.model, cfg.rank, cfg.alpha, cfg.targets)
        if cfg.memory_rank:
            if cfg.rank:
                raise ValueError("memory projections train on top of fixed weights: they need rank 0")
            add_memory_projection(self.model, cfg.memory_rank, cfg.memory_alpha)
        # trainable parameters in float32 whatever the weights' dtype (bf16 base, frozen)
        for m in self.model.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.data = m.lora_A.data.float()
                m.lora_B.data = m.lora_B.data.float()
        gates, lora = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                if n.endswith("memory_gate"):
                    p.data = p.data.float()
                    gates.append(p)
                else:
                    lora.append(p)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.batch < 1:
            raise ValueError(f"batch must be at least 1, not {cfg.batch}")
        if cfg.mix.get("passkey_far", 0) > 0 and not cfg.truncate:
            raise ValueError("passkey_far examples stand for long haystacks of constant segments: they need truncate")
        self.merged = None  # (metadata, tensors) of the adapter merged into the weights, carried when saved
        if cfg.init:
            init = builtin_adapter() if cfg.init == "shipped" else cfg.init
            if init is None:
                raise ValueError("init \"shipped\": this installation has no built-in adapter")
            meta, tensors = read_adapter(init)
            r0 = meta.get("rank") or 0
            params = dict(self.model.named_parameters())
            if r0 and not cfg.rank:  # the init's factors become part of the fixed weights
                merge_lora(self.model, meta, tensors, init)
                self.merged = (meta, tensors)
            elif r0 > cfg.rank:
                raise ValueError(f"{init} has rank {r0}, the run asks for {cfg.rank} (it may grow, not shrink)")
            # A larger rank grows the factors: the adapter's in the first r0 directions (B rescaled to
            # the run's alpha/rank), the new rows of A random and the new columns of B zero, so the
            # run starts from exactly the adapter's function and the new directions are free to learn.
            rescale = (meta["alpha"] / r0) / (cfg.alpha / cfg.rank) if r0 and cfg.rank else 0.0
            mr0 = meta.get("memory_rank") or 0
            if mr0 and mr0 != cfg.memory_rank:
                raise ValueError(f"{init} has memory projections of rank {mr0}; the run asks for {cfg.memory_rank}")
            mrescale = (meta["memory_alpha"] / mr0) / (cfg.memory_alpha / cfg.memory_rank) if mr0 else 0.0
            with torch.no_grad():
                for name, t in tensors.items():
                    if ".lora_" in name and self.merged is not None:
                        continue
                    if name.endswith(".lora_A"):
                        params[name][:r0].copy_(t)
                    elif name.endswith(".lora_B"):
                        params[name][:, :r0].copy_(t * rescale)
                    elif ".memory_proj." in name and name.endswith("_B"):
                        params[name].copy_(t * mrescale)
                    else:
                        params[name].copy_(t)
        with torch.no_grad():  # after `init`: a run may start from an adapter with its gates reset or pruned
            for layer in self.model.model.layers:
                g = layer.self_attn.memory_gate
                if cfg.gate_init is not None:
                    g.fill_(cfg.gate_init)
                if cfg.gate_shut_below is not None:
                    g.masked_fill_(g < cfg.gate_shut_below, self.engine.config.memory_gate_init)
                if cfg.gate_floor is not None:
                    g.clamp_(min=cfg.gate_floor)
        self.cap_gates()
        self.opt = torch.optim.AdamW([
            {"params": lora, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
            {"params": gates, "lr": cfg.gate_lr, "weight_decay": 0.0, "base_lr": cfg.gate_lr},
        ], betas=(0.9, 0.95))
        self.data = data or TrainingData(
            engine.tokenizer, engine.chat, engine.config.segment_length, Path(cfg.data), cfg.mix,
            cfg.memory_segments, cfg.seed, cfg.books, cfg.chat_file or None, cfg.far_tokens,
        )
        self.teacher = teacher  # a test gives its own; else `cfg.teacher` names an adapter file
        if cfg.teacher and teacher is None:
            path = builtin_adapter() if cfg.teacher == "shipped" else cfg.teacher
            if path is None:
                raise ValueError("teacher \"shipped\": this installation has no built-in adapter")
            self.teacher = load_model(cfg.model, device=str(engine.device), dtype=self.model.model.embed_tokens.weight.dtype,
                                      adapter=path, segment_length=engine.config.segment_length).model
        self.context_teacher = None
        if cfg.context_teacher:
            path = cfg.teacher or cfg.init or None
            path = builtin_adapter() if path == "shipped" else path
            if (cfg.teacher or cfg.init) and path is None:
                raise ValueError("context_teacher from \"shipped\": this installation has no built-in adapter")
            window = max(cfg.context_teacher, engine.config.segment_length)
            self.context_teacher = load_model(cfg.model, device=str(engine.device),
                                              dtype=self.model.model.embed_tokens.weight.dtype,
                                              adapter=path, segment_length=window).model
            with torch.no_grad():
                for layer in self.context_teacher.model.layers:
                    layer.self_attn.memory_gate.fill_(-100.0)  # shut: a plain transformer over its window
        for t in (self.teacher, self.context_teacher):
            if t is not None:
                t.eval()
                for p in t.parameters():
                    p.requires_grad_(False)
        self.step = 0
        self.tokens = 0
        self.seconds = 0.0
        self.log_path = self.out / "log.csv"
        self.clock = time.monotonic  # the time budget's clock (a test gives its own)
        self.stopped_early = False  # the time budget ran out before the last step

    # ---- checkpoints ----

    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def save(self) -> None:
        """Write the checkpoint to a new folder, then swap it in: a crash never leaves half of one."""
        d, tmp = self.checkpoint_dir(), self.out / "checkpoint.tmp"
        tmp.mkdir(exist_ok=True)
        names = {id(p): n for n, p in self.model.named_parameters()}
        save_file({names[id(p)]: p.detach().contiguous().cpu() for p in self.params}, str(tmp / "trainable.safetensors"))
        moments = {}
        for p in self.params:
            st = self.opt.state.get(p)
            if st:
                moments[names[id(p)] + ".exp_avg"] = st["exp_avg"].contiguous().cpu()
                moments[names[id(p)] + ".exp_avg_sq"] = st["exp_avg_sq"].contiguous().cpu()
                moments[names[id(p)] + ".step"] = torch.as_tensor(st["step"]).reshape(1).float().cpu()
        save_file(moments, str(tmp / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        state = {"step": self.step, "tokens": self.tokens, "seconds": self.seconds, "steps": self.cfg.steps,
                 "config": json.loads(self.cfg.to_json())}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        old = self.out / "checkpoint.old"
        if d.exists():
            d.rename(old)
        tmp.rename(d)
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        save_adapter(self.model, self.out / "adapter.safetensors", self.adapter_info(), merged=self.merged)

    def adapter_info(self) -> dict:
        return {"steps": self.step, "tokens": self.tokens, "train_seconds": round(self.seconds),
                "segment_length": self.engine.config.segment_length, "device": str(self.engine.device),
                "mix": self.cfg.mix, "targets": list(self.cfg.targets), "base": self.cfg.model,
                "init": self.cfg.init}

    def resume(self) -> bool:
        d = self.checkpoint_dir()
        if not (d / "state.json").is_file():
            return False
        state = json.loads((d / "state.json").read_text())
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in load_file(str(d / "trainable.safetensors")).items():
                params[n].copy_(t)
        moments = load_file(str(d / "optimizer.safetensors"))
        for n, p in params.items():
            if n + ".exp_avg" in moments:
                self.opt.state[p] = {
                    "step": torch.tensor(float(moments[n + ".step"][0])),
                    "exp_avg": moments[n + ".exp_avg"].to(p.device),
                    "exp_avg_sq": moments[n + ".exp_avg_sq"].to(p.device),
                }
        torch.set_rng_state(load_file(str(d / "rng.safetensors"))["torch"])
        self.step, self.tokens, self.seconds = state["step"], state["tokens"], state["seconds"]
        if self.cfg.minutes and state.get("steps"):
            # a run whose steps a time budget cut keeps that schedule; a later budget can cut it further
            self.cfg.steps = min(self.cfg.steps, state["steps"])
        return True

    # ---- training ----

    def train_step(self) -> list[dict]:
        cfg = self.cfg
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(self.step, cfg)
        rows = []
        t0 = time.perf_counter()
        for micro in range(cfg.accumulate):
            index = self.step * cfg.accumulate + micro
            examples = [self.data.example(index)] if cfg.batch == 1 else self.data.batch(index, cfg.batch)
            b = collate(examples, self.engine.config.segment_length, cfg.truncate, cfg.grad_tail)
            ids = torch.tensor(b.ids, device=self.engine.device)
            targets = torch.tensor(b.targets, device=self.engine.device)
            if self.teacher is not None and examples[0].task in DISTILLED:
                losses = self.distill_loss(ids, targets)
            else:
                by_context = self.context_teacher is not None and examples[0].task == "lm"
                teacher = self.context_hidden(ids) if by_context else None
                losses = forward_train(self.model, ids, targets, constant=b.constant, repeat=b.repeat, per_row=True,
                                                  keep_activations=cfg.keep_activations, teacher=teacher)
            (losses.mean() / cfg.accumulate).backward()
            for ex, loss in zip(examples, losses.detach().tolist()):
                self.tokens += len(ex.ids)
                rows.append({"task": ex.task, "loss": loss, "tokens": len(ex.ids),
                             "memory_segments": ex.memory_segments + sum(r - 1 for r in ex.repeat.values())})
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.cap_gates()
        self.model.eval()
        self.seconds += time.perf_counter() - t0
        self.step += 1
        gates = torch.cat([layer.self_attn.memory_gate.detach().float() for layer in self.model.model.layers])
        for r in rows:
            r.update(step=self.step, lr=self.opt.param_groups[0]["lr"], grad_norm=grad_norm,
                     gate_mean=float(gates.mean()), gate_max=float(gates.max()),
                     tokens_seen=self.tokens, seconds=round(self.seconds, 1))
        return rows

    def cap_gates(self) -> None:
        if self.cfg.gate_cap is not None:
            with torch.no_grad():
                for layer in self.model.model.layers:
                    layer.self_attn.memory_gate.clamp_(max=self.cfg.gate_cap)

    def distill_loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """KL(teacher ‖ model) per scored token of one-segment examples with an empty memory, (B,)."""
        return kl_per_token(self.teacher, self.model, ids, targets != -100, per_row=True)

    @torch.no_grad()
    def context_hidden(self, ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """The context teacher's final hidden states for every segment of ids (B, N): each segment
        read with the tokens before it, as many as the teacher's window holds (one pass when the
        whole sequence fits)."""
        L, W, N = self.engine.config.segment_length, self.context_teacher.config.segment_length, ids.shape[1]
        if N <= W:
            h, _ = self.context_teacher.segment(ids, None)
            return {i: h[:, s : s + L] for i, s in enumerate(range(0, N, L))}
        out = {}
        for i, s in enumerate(range(0, N, L)):
            end = min(s + L, N)
            start = max(0, end - W)
            h, _ = self.context_teacher.segment(ids[:, start:end], None)
            out[i] = h[:, s - start :]
        return out

    def log(self, rows: list[dict]) -> None:
        cols = ["step", "task", "loss", "tokens", "memory_segments", "lr", "grad_norm", "gate_mean", "gate_max",
                "tokens_seen", "seconds"]
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            w = csv.DictWriter(f, cols)
            if new:
                w.writeheader()
            w.writerows(rows)

    def run(self, resume: bool = True, on_step=None) -> None:
        if resume and self.resume():
            print(f"resumed at step {self.step} ({self.tokens:,} tokens)", flush=True)
            self._trim_log()
        (self.out / "config.json").write_text(self.cfg.to_json())
        start, timed = self.clock(), []
        while self.step < self.cfg.steps:
            t0 = self.clock()
            rows = self.train_step()
            timed.append(self.clock() - t0)
            self.log(rows)
            mean = sum(r["loss"] for r in rows) / len(rows)
            print(f"step {self.step:5d}  loss {mean:7.4f}  " + "  ".join(f"{r['task']}={r['loss']:.3f}" for r in rows)
                  + f"  gate {rows[0]['gate_mean']:+.2f}  {self.tokens:,} tokens  {self.seconds / 60:.1f} min", flush=True)
            if on_step is not None:
                on_step(self)
            if self.cfg.minutes:
                self._fit_budget(start, timed)
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps or self.stopped_early:
                self.save()
                plot(self.log_path, self.out / "loss.png")
            if self.stopped_early:
                print(f"time budget of {self.cfg.minutes:g} min used up at step {self.step} of {self.cfg.steps}: "
                      "saved; the same command continues", flush=True)
                return

    CALIBRATION_STEPS = 3  # steps timed before the budget cuts the schedule (the first one, compiling, not counted)

    def _fit_budget(self, start: float, timed: list[float]) -> None:
        """Within `minutes`: once a few steps are timed, cut `steps` to what the rest of the budget
        holds at their pace (the cosine schedule then ends on time); stop when the next step would
        not fit."""
        left = self.cfg.minutes * 60 - (self.clock() - start)
        pace = statistics.median(timed[1:] or timed)  # the first step (compiling) counts only while alone
        if len(timed) == self.CALIBRATION_STEPS + 1:
            fits = self.step + int(left // pace)
            if fits < self.cfg.steps:
                print(f"time budget: {pace:.1f} s a step, {self.cfg.steps} steps cut to {fits}", flush=True)
                self.cfg.steps = max(self.step, fits)
        if self.step < self.cfg.steps and left < pace:
            self.stopped_early = True

    def _trim_log(self) -> None:
        """Drop log rows written after the checkpoint (a crash between two saves)."""
        if not self.log_path.exists():
            return
        with open(self.log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        self.log_path.unlink()
        if rows:
            for r in rows:
                r["step"] = int(r["step"])
            self.log(rows)


def kl_per_token(teacher: torch.nn.Module, model: torch.nn.Module, ids: torch.Tensor, scored: torch.Tensor,
                 per_row: bool = False) -> torch.Tensor:
    """Mean KL(teacher ‖ model) of the next-token distributions over the `scored` positions of one
    segment read with an empty memory (the gradient reaches `model` only); `per_row`: each row's.
    Teacher and model are adapters of one base model: one vocabulary head (`head_loss`) serves both."""
    with torch.no_grad():
        ht, _ = teacher.segment(ids, None)
    h, _ = model.segment(ids, None)
    C = h.shape[-1]
    kl = head_loss(h.reshape(-1, C), model.lm_head.weight, ids.reshape(-1), ht.reshape(-1, C)).view(ids.shape)
    if per_row:
        return (kl * scored).sum(-1) / scored.sum(-1).clamp(min=1)
    return (kl * scored).sum() / scored.sum().clamp(min=1)


def per_step(rows: list[dict], task: str) -> list[tuple[int, float]]:
    """(step, mean loss of the task's sequences in that step) for the steps that had any: one point
    per step, however many sequences a step trains (a batch logs each of its rows)."""
    sums: dict[int, list[float]] = {}
    for r in rows:
        if r["task"] == task:
            sums.setdefault(int(r["step"]), []).append(float(r["loss"]))
    return [(step, sum(v) / len(v)) for step, v in sorted(sums.items())]


def plot(log_csv: Path, png: Path, smooth: int = 20) -> bool:
    """Loss per task against optimiser steps (the mean of the step's sequences, then a moving average),
    and the mean gate; False when matplotlib is missing (an optional dependency: `pip install .[train]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    for task in TASKS:
        pts = per_step(rows, task)
        if not pts:
            continue
        xs, ys = zip(*pts)
        k = max(1, min(smooth, len(ys) // 5))
        avg = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, avg, label=f"{task} ({len(ys)} steps)")
    ax.set_ylabel("loss (moving average)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    steps = sorted({int(r["step"]) for r in rows})
    gate = {int(r["step"]): (float(r["gate_mean"]), float(r["gate_max"])) for r in rows}
    ax2.plot(steps, [gate[s][0] for s in steps], color="black", label="mean")
    ax2.plot(steps, [gate[s][1] for s in steps], color="black", linestyle="--", label="largest")
    ax2.set_ylabel("β")
    ax2.legend(loc="upper left", fontsize="small")
    ax2.set_xlabel("optimiser step")
    ax2.grid(alpha=0.3)
    run = log_csv.parent.name if log_csv.stem == "log" else log_csv.stem  # lab/runs/x/log.csv, or log-x.csv
    fig.suptitle(f"{run}: {rows[-1]['tokens_seen']} tokens, {float(rows[-1]['seconds']) / 60:.0f} min")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def threads_from_env() -> None:
    n = os.environ.get("INFINI_THREADS")
    if n:
        torch.set_num_threads(int(n))
