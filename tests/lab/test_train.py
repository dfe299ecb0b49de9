"""The trainer and the adapter, on a tiny random model: a few steps lower the loss, a resumed run
continues exactly, the gates and the low-rank factors receive gradient through the memory, and the
adapter file merges into plain weights that compute what the trained model computed. No training
run of the real model happens here."""

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from infini_reader import engine

import infini_reader.engine.model  # noqa: F401
from infini_reader.engine import Engine, build_model, load_model
from infini_reader.engine.adapter import AdapterError, LoRALinear, add_lora, apply_adapter, read_adapter, save_adapter
from lab.train.__main__ import parse
from lab.train.data import Example
from lab.train.trainer import TrainConfig, Trainer, lr_factor, plot

from tests.conftest import write_nudged_adapter

from .conftest import tiny_config
from lab.train.unroll import forward_train
import lab.train.unroll

L = 16  # the tiny model's segment length


class RecallData:
    """A copy task only the memory can solve: random tokens fill one segment, the last segment asks
    for its first four tokens back (a marker token, then the four scored)."""

    def __init__(self, seed=0, pool=2):
        self.items = []
        r = random.Random(seed)
        for _ in range(pool):
            memory = [r.randrange(10, 90) for _ in range(L)]
            seq = memory + [5, 6, 7] + memory[:4]
            ids, nxt = seq[:-1], seq[1:]
            targets = [t if i >= L + 2 else -100 for i, t in enumerate(nxt)]
            self.items.append(Example("passkey", ids, targets, 1))

    def example(self, index):
        return self.items[index % len(self.items)]


def tiny_trainer(tmp_path, steps=6, **kw):
    kw = {"lr": 3e-3, **kw}
    kw = {"rank": 4, "alpha": 8, "gate_lr": 3e-2, **kw}
    cfg = TrainConfig(out=str(tmp_path), steps=steps, accumulate=2,
                      warmup=2, save_every=2, **kw)
    model = build_model(tiny_config(), seed=0)
    return Trainer(cfg, engine=Engine(model), data=RecallData())


def test_a_few_steps_lower_the_loss(tmp_path):
    t = tiny_trainer(tmp_path, steps=30, lr=1e-2)
    first = sum(r["loss"] for r in t.train_step()) / 2
    for _ in range(28):
        t.train_step()
    last = sum(r["loss"] for r in t.train_step()) / 2
    assert last < 0.9 * first, (first, last)  # measured: 4.57 → 3.91


def test_gates_and_factors_receive_gradient_through_the_memory(tmp_path):
    t = tiny_trainer(tmp_path)
    ex = t.data.example(0)
    loss = forward_train(t.model, torch.tensor([ex.ids]), torch.tensor([ex.targets]))
    loss.backward()
    for layer in t.model.model.layers:
        g = layer.self_attn.memory_gate.grad
        assert g is not None and bool((g != 0).all())
        assert layer.self_attn.k_proj.lora_B.grad.abs().sum() > 0  # keys written into the memory
    # only the adapter trains: the base weights are frozen
    frozen = [n for n, p in t.model.named_parameters() if not p.requires_grad]
    assert "model.layers.0.self_attn.q_proj.base.weight" in frozen and "model.embed_tokens.weight" in frozen
    assert all(n.endswith(("lora_A", "lora_B", "memory_gate")) for n, p in t.model.named_parameters() if p.requires_grad)


def test_filler_segments_are_neither_scored_nor_hold_the_needle():
    targets = [-100] * (5 * L) + [1, 2]
    ex = Example("passkey", [0] * len(targets), targets, 5, needle_at=2 * L - 3)  # across segments 1 and 2
    assert ex.filler_segments(L, needle_len=8) == {0, 3, 4}
    assert Example("lm", [0] * (2 * L), [-100] * L + [1] * L, 1).filler_segments(L) == {0}
    # `tail`: the segments just before the first scored one keep their gradient (a story told
    # before it is asked about); it stops at the sequence's start
    story = Example("qa", [0] * (4 * L + 2), [-100] * (4 * L) + [1, 2], 4)
    assert story.filler_segments(L) == {0, 1, 2, 3}
    assert story.filler_segments(L, tail=2) == {0, 1}
    assert story.filler_segments(L, tail=9) == set()
    assert ex.filler_segments(L, needle_len=8, tail=1) == {0, 3}
    # a segment standing for repeated copies (passkey_far) is never pulled out by the tail
    far = Example("passkey_far", [0] * len(targets), targets, 5, needle_at=2 * L - 3, repeat={3: 40, 4: 7})
    assert far.filler_segments(L, needle_len=8, tail=1) == {0, 3, 4}


def test_truncated_backprop_keeps_the_loss_and_the_path_through_the_memory():
    """Segments run without gradient give the same loss; the key written before them still gets
    the question's gradient through the memory that flows past them."""
    model = build_model(tiny_config(), seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.fill_(0.0)  # the memory read counts
    r = random.Random(2)
    ids = torch.tensor([[r.randrange(10, 90) for _ in range(4 * L + 6)]])
    targets = torch.full_like(ids, -100)
    targets[0, -4:] = ids[0, :4]  # the last segment asks for segment 0's first tokens

    def run(constant):
        model.zero_grad(set_to_none=True)
        loss = forward_train(model, ids, targets, constant=constant)
        loss.backward()
        return float(loss.detach()), [layer.self_attn.k_proj.weight.grad.clone() for layer in model.model.layers]

    full, g_full = run(set())
    trunc, g_trunc = run({1, 2, 3})
    key_const, g_key_const = run({0, 1, 2, 3})
    assert trunc == pytest.approx(full, rel=1e-5) and key_const == pytest.approx(full, rel=1e-5)
    # segment 0's keys reach the loss through segments 1-3 (identity on M): a different gradient
    # than with segment 0 constant too, and closer to the full one
    assert not torch.allclose(g_trunc[0], g_key_const[0])
    err = lambda g: sum(float((a - b).norm()) for a, b in zip(g, g_full))
    assert err(g_trunc) < err(g_key_const)
    with pytest.raises(ValueError, match="scored"):
        forward_train(model, ids, targets, constant={4})


def test_a_repeated_constant_segment_is_written_as_often_as_it_stands_for():
    """A haystack of one segment written three times gives the loss of the same segment there three
    times, when its writes do not depend on the memory (only the last layer reads it, so no write
    does); that is what `passkey_far` relies on for haystacks of repeated filler."""
    model = build_model(tiny_config(), seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.fill_(-30.0)
        model.model.layers[-1].self_attn.memory_gate.fill_(4.0)
    r = random.Random(3)
    seg = lambda: [r.randrange(10, 90) for _ in range(L)]
    a, b, c = seg(), seg(), seg()[:6]
    targets_of = lambda ids: torch.tensor([[-100] * (len(ids) - 4) + ids[:4]])
    long_ids, short_ids = a + b + b + b + c, a + b + c
    with torch.no_grad():
        real = forward_train(model, torch.tensor([long_ids]), targets_of(long_ids), constant={0, 1, 2, 3})
        once = forward_train(model, torch.tensor([short_ids]), targets_of(short_ids), constant={0, 1})
        thrice = forward_train(model, torch.tensor([short_ids]), targets_of(short_ids), constant={0, 1},
                                     repeat={1: 3})
    assert float(thrice) == pytest.approx(float(real), rel=1e-5)
    assert abs(float(once) - float(real)) > 1e-3  # the count matters: the test sees a wrong one
    thrice_grad = forward_train(model, torch.tensor([short_ids]), targets_of(short_ids), constant={0, 1},
                                      repeat={1: 3})
    assert float(thrice_grad.detach()) == pytest.approx(float(real), rel=1e-5) and thrice_grad.requires_grad
    with pytest.raises(ValueError, match="constant"):
        forward_train(model, torch.tensor([short_ids]), targets_of(short_ids), constant={0}, repeat={1: 3})
    delta = build_model(tiny_config(memory_update="delta"), seed=0)
    with pytest.raises(ValueError, match="linear"):
        forward_train(delta, torch.tensor([short_ids]), targets_of(short_ids), constant={0, 1}, repeat={1: 3})


def test_the_gates_are_not_decayed_and_learn_faster(tmp_path):
    t = tiny_trainer(tmp_path)
    lora, gates = t.opt.param_groups
    assert gates["weight_decay"] == 0.0 and gates["base_lr"] > lora["base_lr"]
    assert all(p.dtype == torch.float32 for p in t.params)


def test_a_resumed_run_continues_exactly(tmp_path):
    whole = tiny_trainer(tmp_path / "whole", steps=6)
    whole.run()
    part = tiny_trainer(tmp_path / "part", steps=6)

    def crash(trainer):  # killed after step 5, before its checkpoint: resume from step 4
        if trainer.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        part.run(on_step=crash)
    resumed = tiny_trainer(tmp_path / "part", steps=6)  # a new process: a fresh model, then resume
    resumed.run()
    assert resumed.step == 6
    a = dict(whole.model.named_parameters())
    b = dict(resumed.model.named_parameters())
    for n, p in a.items():
        assert torch.equal(p, b[n]), n
    rows = lambda d: [(r["step"], r["loss"]) for r in csv.DictReader(open(d / "log.csv"))]
    assert rows(tmp_path / "whole") == rows(tmp_path / "part")
    assert (tmp_path / "part" / "loss.png").stat().st_size > 1000


def run_on_a_fake_clock(trainer, seconds_per_step):
    """Run with a clock that advances by seconds_per_step(step) for each optimiser step."""
    now = [0.0]
    trainer.clock = lambda: now[0]
    step = trainer.train_step

    def timed_step():
        rows = step()
        now[0] += seconds_per_step(trainer.step)
        return rows

    trainer.train_step = timed_step
    trainer.run()


def test_a_time_budget_cuts_the_schedule_to_fit(tmp_path):
    t = tiny_trainer(tmp_path, steps=20, minutes=1.0)
    run_on_a_fake_clock(t, lambda step: 10.0)  # 10 s a step, 60 s budget: six steps fit
    assert t.step == t.cfg.steps == 6 and not t.stopped_early
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["steps"] == 6
    assert lr_factor(5, t.cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert (tmp_path / "adapter.safetensors").is_file()


def test_a_run_stopped_by_its_time_budget_is_saved_and_continues(tmp_path):
    t = tiny_trainer(tmp_path, steps=20, minutes=1.0)
    run_on_a_fake_clock(t, lambda step: 10.0 if step <= 4 else 25.0)  # slower after the cut to 6 steps
    assert t.stopped_early and t.step == 5
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5 and state["steps"] == 6  # saved at once, not at the next save_every
    again = tiny_trainer(tmp_path, steps=20, minutes=1.0)  # the same command, a new process
    run_on_a_fake_clock(again, lambda step: 10.0)
    assert again.step == again.cfg.steps == 6 and not again.stopped_early
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "log.csv"))]
    assert steps == sorted(steps) and steps[-1] == 6 and steps.count(5) == 2  # two examples a step


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=0.01)


def test_adapter_merges_into_the_plain_model(tmp_path):
    t = tiny_trainer(tmp_path, steps=4)
    t.run()
    ids = torch.tensor([[random.Random(1).randrange(97) for _ in range(3 * L + 5)]])
    with torch.no_grad():
        want = forward_train(t.model, ids[:, :-1], ids[:, 1:], grad_checkpoint=False)
    plain = build_model(tiny_config(), seed=0)
    meta = apply_adapter(plain, tmp_path / "adapter.safetensors")
    assert meta["rank"] == 4 and meta["steps"] == 4
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    with torch.no_grad():
        got = forward_train(plain, ids[:, :-1], ids[:, 1:], grad_checkpoint=False)
    assert got == pytest.approx(float(want), rel=1e-5)
    assert float(plain.model.layers[0].self_attn.memory_gate.detach()[0]) != -6.0  # the gates moved


def test_a_blend_of_two_adapters_merges_into_the_weighted_change(tmp_path):
    from lab.train.blend import main as blend_main

    write_nudged_adapter(build_model(tiny_config(), seed=0), tmp_path / "a.safetensors", by=0.05, rank=2, alpha=4)
    write_nudged_adapter(build_model(tiny_config(), seed=0), tmp_path / "b.safetensors", by=-0.03, rank=4, alpha=4)
    assert blend_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--t", "0.3",
                       "--gates", "0.5", "--out", str(tmp_path / "ab.safetensors")]) == 0
    merged = {}
    for name in ("a", "b", "ab"):
        model = build_model(tiny_config(), seed=0)
        meta = apply_adapter(model, tmp_path / f"{name}.safetensors")
        merged[name] = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    assert meta["rank"] == 6 and meta["blend"]["t"] == 0.3
    base = {n: p.detach().float() for n, p in build_model(tiny_config(), seed=0).named_parameters()}
    q = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(merged["a"][q], base[q]) and not torch.equal(merged["b"][q], base[q])
    for n, w in base.items():
        if n.endswith("memory_gate"):
            want = 0.5 * merged["a"][n] + 0.5 * merged["b"][n]
        else:
            want = w + 0.3 * (merged["a"][n] - w) + 0.7 * (merged["b"][n] - w)
        torch.testing.assert_close(merged["ab"][n], want, atol=1e-6, rtol=1e-5, msg=n)
    # only layer 1 blended: layer 0 takes B's change, the gates still follow --gates
    blend_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--t", "1", "--gates", "1",
                "--layers", "1-1", "--out", str(tmp_path / "a1.safetensors")])
    model = build_model(tiny_config(), seed=0)
    apply_adapter(model, tmp_path / "a1.safetensors")
    got = {n: p.detach().float() for n, p in model.named_parameters()}
    for n in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight",
              "model.layers.0.self_attn.memory_gate"):
        want = merged["b"][n] if n.startswith("model.layers.0.") and n.endswith("weight") else merged["a"][n]
        torch.testing.assert_close(got[n], want, atol=1e-6, rtol=1e-5, msg=n)


def test_adapter_for_another_model_is_refused(tmp_path):
    model = build_model(tiny_config(), seed=0)
    add_lora(model, 2, 4)
    save_adapter(model, tmp_path / "a.safetensors")
    other = build_model(tiny_config(num_hidden_layers=2), seed=0)
    with pytest.raises(AdapterError, match="another model"):
        apply_adapter(other, tmp_path / "a.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(AdapterError, match="not a readable adapter"):
        read_adapter(tmp_path / "junk.safetensors")


def test_load_model_applies_an_adapter_file(tmp_path):
    model = build_model(tiny_config(), seed=3)
    Engine(model).export_hf(tmp_path / "m")
    write_nudged_adapter(model, tmp_path / "a.safetensors")
    plain = load_model(tmp_path / "m", device="cpu", dtype="float32")
    adapted = load_model(tmp_path / "m", device="cpu", dtype="float32", adapter=tmp_path / "a.safetensors")
    assert plain.fingerprint != adapted.fingerprint  # memories of one are refused by the other
    ids = list(range(5, 30))
    assert not torch.allclose(plain.logits(ids), adapted.logits(ids))


def test_command_line_options_override_the_config_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"steps": 50, "rank": 4, "memory_segments": [2, 4], "mix": {"passkey": 1.0}}))
    [cfg], fresh = parse(["--config", str(f), "--steps", "7", "--targets", "q_proj,v_proj"])
    assert not fresh and parse(["--config", str(f), "--fresh"])[1]
    assert cfg.steps == 7 and cfg.rank == 4 and cfg.memory_segments == (2, 4) and cfg.mix == {"passkey": 1.0}
    assert cfg.targets == ("q_proj", "v_proj")
    # a boolean option: --truncate / --no-truncate, either overriding the file
    f.write_text(json.dumps({"truncate": True, "grad_tail": 1}))
    assert parse(["--config", str(f), "--no-truncate"])[0][0].truncate is False
    [cfg], _ = parse(["--config", str(f), "--grad-tail", "2"])
    assert cfg.truncate is True and cfg.grad_tail == 2
    assert parse(["--truncate"])[0][0].truncate is True and parse([])[0][0].truncate is False
    with pytest.raises(SystemExit):
        parse(["--truncate", "false"])  # takes no value: never read as bool("false")
    f.write_text(json.dumps({"stepz": 1}))
    with pytest.raises(ValueError, match="stepz"):
        parse(["--config", str(f)])


def test_phases_run_in_order_each_from_the_adapter_before(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"out": str(tmp_path / "run"), "rank": 4, "lr": 1e-3, "phases": [
        {"name": "short", "segment_length": 64, "gate_init": -2, "init": "a.safetensors"},
        {"name": "long", "segment_length": 256, "lr": 5e-4},
    ]}))
    short, long = parse(["--config", str(f), "--device", "cuda"])[0]
    assert short.out == str(tmp_path / "run" / "1-short") and short.init == "a.safetensors"
    assert short.segment_length == 64 and short.gate_init == -2 and short.lr == 1e-3
    assert long.out == str(tmp_path / "run" / "2-long") and long.init == str(tmp_path / "run" / "1-short" / "adapter.safetensors")
    assert long.segment_length == 256 and long.gate_init is None and long.lr == 5e-4 and long.rank == 4
    assert short.device == long.device == "cuda"  # a flag applies to every phase


def test_plot_draws_the_log(tmp_path):
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["step", "task", "loss", "gate_mean", "gate_max", "tokens_seen", "seconds"])
        w.writeheader()
        for s in range(1, 30):
            w.writerow({"step": s, "task": "lm" if s % 2 else "qa", "loss": 3 / s, "gate_mean": -6 + s / 10,
                        "gate_max": -5 + s / 5, "tokens_seen": 100 * s, "seconds": s})
    assert plot(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_draws_one_point_a_step_per_task():
    from lab.train.trainer import per_step

    rows = [{"step": "1", "task": "lm", "loss": "0.2"}, {"step": "1", "task": "lm", "loss": "0.4"},
            {"step": "1", "task": "qa", "loss": "2.0"}, {"step": "2", "task": "lm", "loss": "0.1"},
            {"step": "3", "task": "qa", "loss": "1.0"}, {"step": "3", "task": "qa", "loss": "3.0"}]
    assert per_step(rows, "lm") == [(1, pytest.approx(0.3)), (2, pytest.approx(0.1))]
    assert per_step(rows, "qa") == [(1, 2.0), (3, 2.0)]
    assert per_step(rows, "chat") == []


def test_a_run_can_start_from_an_adapter(tmp_path):
    first = tiny_trainer(tmp_path / "first", steps=4)
    first.run()
    second = tiny_trainer(tmp_path / "second", steps=4, init=str(tmp_path / "first" / "adapter.safetensors"))
    a, b = dict(first.model.named_parameters()), dict(second.model.named_parameters())
    trained = [n for n, p in a.items() if p.requires_grad]
    assert trained and all(torch.equal(a[n], b[n]) for n in trained)
    assert all(b[n].dtype == torch.float32 for n in trained)
    with pytest.raises(ValueError, match="rank"):
        tiny_trainer(tmp_path / "third", steps=4, init=str(tmp_path / "first" / "adapter.safetensors"), rank=2)
    with pytest.raises(ValueError, match="truncate"):
        tiny_trainer(tmp_path / "far", steps=1, mix={"passkey_far": 1.0})


def test_a_run_can_grow_the_rank_of_the_adapter_it_starts_from(tmp_path):
    first = tiny_trainer(tmp_path / "first", steps=4)  # rank 4, alpha 8
    first.run()
    grown = tiny_trainer(tmp_path / "grown", steps=4, init=str(tmp_path / "first" / "adapter.safetensors"),
                         rank=12, alpha=6)
    ex = first.data.example(0)
    ids, targets = torch.tensor([ex.ids]), torch.tensor([ex.targets])
    with torch.no_grad():
        assert torch.allclose(forward_train(grown.model, ids, targets), forward_train(first.model, ids, targets),
                              atol=1e-5)
    for m in grown.model.modules():
        if isinstance(m, LoRALinear):
            assert m.rank == 12 and bool((m.lora_B[:, 4:] == 0).all()) and bool((m.lora_A[4:] != 0).any())
    grown.run()  # and the new directions learn
    moved = [m for m in grown.model.modules() if isinstance(m, LoRALinear) and bool((m.lora_B[:, 4:] != 0).any())]
    assert moved


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_a_model_learns_to_recall_through_its_memory_alone(rule):
    """Trained from scratch on fresh random keys (nothing to memorise), a tiny model names a digit it
    saw only in the segment before: the memory is a channel gradient descent learns to use. With the
    gates shut and frozen, the same training stays at chance (ln 10)."""
    import math

    from lab.train.probe import train_recall

    assert train_recall(0.0, 150, rule=rule)[-1][1] < 0.1
    assert train_recall(-100.0, 150, rule=rule, frozen_gate=True)[-1][1] > 0.9 * math.log(10)


RECIPES = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "lab" / "recipes").glob("*.json"))


def test_every_recipe_is_checked():
    assert {"cpu.json", "cpu-memory.json", "cpu-memory-wide.json", "gpu.json"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_the_shipped_recipes_parse(name):
    configs, _ = parse(["--config", str(Path(__file__).resolve().parents[2] / "lab" / "recipes" / name)])
    assert configs and all(c.steps > 0 and c.mix for c in configs)
    for before, after in zip(configs, configs[1:]):
        assert after.init == str(Path(before.out) / "adapter.safetensors")


def test_the_shipped_adapter_s_runs_follow_each_other():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "lab" / "recipes"
    names = ("cpu.json", "cpu-chat.json", "cpu-chat-2.json", "cpu-chat-3.json")
    runs = [parse(["--config", str(folder / name)])[0][0] for name in names]
    assert not runs[0].init
    for before, after in zip(runs, runs[1:]):
        assert after.init == str(Path(before.out) / "adapter.safetensors") and after.chat_file


@pytest.mark.parametrize("option, expect", [
    # heads that stayed low are shut (back to the model's −6); the others keep their value
    ({"gate_shut_below": -1.0}, lambda g: torch.where(g < -1.0, torch.full_like(g, -6.0), g)),
    # a floor raises only the gates below it
    ({"gate_floor": -3.0}, lambda g: g.clamp(min=-3.0)),
    # a cap lowers only the gates above it
    ({"gate_cap": 0.0}, lambda g: g.clamp(max=0.0)),
])
def test_gates_can_be_shut_or_raised_at_the_start_of_a_run(tmp_path, option, expect):
    first = tiny_trainer(tmp_path / "first", steps=2)
    with torch.no_grad():
        for i, layer in enumerate(first.model.model.layers):
            layer.self_attn.memory_gate.copy_(torch.linspace(-7, 1, 6) + i)
    save_adapter(first.model, tmp_path / "a.safetensors", {})
    second = tiny_trainer(tmp_path / "second", steps=2, init=str(tmp_path / "a.safetensors"), **option)
    assert second.engine.config.memory_gate_init == -6.0
    for i, layer in enumerate(second.model.model.layers):
        torch.testing.assert_close(layer.self_attn.memory_gate.detach(), expect(torch.linspace(-7, 1, 6) + i))
    (name, value), = option.items()
    assert getattr(TrainConfig.from_json(json.dumps(option)), name) == value


def test_a_gate_cap_holds_through_training(tmp_path):
    def gates(t):
        return torch.cat([layer.self_attn.memory_gate.detach() for layer in t.model.model.layers])

    free = tiny_trainer(tmp_path / "free", steps=6, gate_lr=0.1)
    free.run(resume=False)
    capped = tiny_trainer(tmp_path / "capped", steps=6, gate_lr=0.1, gate_cap=-5.8)
    capped.run(resume=False)
    assert gates(free).max() > -5.7  # without the cap the recall task opens some gates past it
    assert gates(capped).max() == pytest.approx(-5.8)  # with it they stop there
    assert (gates(capped) < -5.8).any()  # and the cap does not set the others


class ChatData:
    """One-segment examples with no memory (the `chat` task's shape): a prompt, then a scored answer."""

    def __init__(self, seed=0):
        r = random.Random(seed)
        self.items = []
        for _ in range(2):
            seq = [r.randrange(10, 90) for _ in range(12)]
            self.items.append(Example("chat", seq[:-1], [-100] * 5 + seq[6:], 0))

    def example(self, index):
        return self.items[index % len(self.items)]


def test_examples_without_memory_are_distilled_toward_the_teacher(tmp_path):
    # a teacher equal to the model the run starts from: nothing to learn, the loss and its gradient are zero
    same = build_model(tiny_config(), seed=0)
    t = Trainer(TrainConfig(out=str(tmp_path / "same"), rank=4, alpha=8, accumulate=2, steps=2),
                engine=Engine(build_model(tiny_config(), seed=0)), data=ChatData(), teacher=same)
    ex = t.data.example(0)
    loss = t.distill_loss(torch.tensor([ex.ids]), torch.tensor([ex.targets]))
    assert abs(float(loss.detach())) < 1e-5
    # a teacher with an adapter of its own: the model is pulled toward it, step by step
    teacher = build_model(tiny_config(), seed=0)
    write_nudged_adapter(teacher, tmp_path / "teacher.safetensors", by=0.2)
    teacher = build_model(tiny_config(), seed=0)
    apply_adapter(teacher, tmp_path / "teacher.safetensors")
    t = Trainer(TrainConfig(out=str(tmp_path / "run"), rank=4, alpha=8, accumulate=2, steps=20, lr=1e-2, warmup=1),
                engine=Engine(build_model(tiny_config(), seed=0)), data=ChatData(), teacher=teacher)
    first = sum(r["loss"] for r in t.train_step()) / 2
    assert first > 1e-3
    # the loss is KL(teacher ‖ model) over the scored tokens only (the prompt's are not)
    ids, targets = torch.tensor([ex.ids]), torch.tensor([ex.targets])
    with torch.no_grad():
        p = torch.log_softmax(teacher.lm_head(teacher.segment(ids, None)[0]).float(), -1)[0, 5:]
        q = torch.log_softmax(t.model.lm_head(t.model.segment(ids, None)[0]).float(), -1)[0, 5:]
        assert float(t.distill_loss(ids, targets)) == pytest.approx(float((p.exp() * (p - q)).sum(-1).mean()), rel=1e-4)
    for _ in range(18):
        t.train_step()
    last = sum(r["loss"] for r in t.train_step()) / 2
    assert last < 0.5 * first, (first, last)
    # examples with a memory are scored on their tokens as before, whatever the teacher
    t.data = RecallData()
    ex = t.data.example(t.step * 2)
    with torch.no_grad():
        expect = float(forward_train(t.model, torch.tensor([ex.ids]), torch.tensor([ex.targets])))
    rows = t.train_step()
    assert rows[0]["task"] == "passkey" and rows[0]["loss"] == pytest.approx(expect, rel=1e-4)


def test_the_loss_takes_logits_only_where_tokens_are_scored(monkeypatch):
    """The sequence loss computes the vocabulary's logits only at scored positions: the same loss and
    the same gradients as cross-entropy over every position with the unscored ones ignored."""
    model = build_model(tiny_config(), seed=0)
    r = random.Random(3)
    ids = torch.tensor([[r.randrange(97) for _ in range(2 * L + 7)]])
    targets = torch.tensor([[r.randrange(97) for _ in range(2 * L + 7)]])
    targets[0, : L + 3] = -100  # segment 0 unscored, segment 1 partly, the last short one wholly scored
    targets[0, L + 9] = -100
    for layer in model.model.layers:
        layer.self_attn.memory_gate.data.fill_(0.5)  # the memory counts

    def full(ids, targets):  # every position's logits, the unscored ignored
        total, mem = 0.0, None
        for s in range(0, ids.shape[1], L):
            h, deltas = model.segment(ids[:, s : s + L], mem)
            logits = model.lm_head(h).float()
            total = total + torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets[:, s : s + L].flatten(), ignore_index=-100, reduction="sum")
            mem = [(d[0] if mem is None else m[0] + d[0], d[1] if mem is None else m[1] + d[1])
                   for m, d in zip(mem or [None] * len(deltas), deltas)]
        return total / (targets != -100).sum()

    params = [p for p in model.parameters() if p.requires_grad]
    want = full(ids, targets)
    want_grads = torch.autograd.grad(want, params)
    got = forward_train(model, ids, targets)
    got_grads = torch.autograd.grad(got, params)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    rows = []
    real = lab.train.unroll.head_loss
    monkeypatch.setattr(lab.train.unroll, "head_loss", lambda h, *a: rows.append(h.shape[0]) or real(h, *a))
    with torch.no_grad():
        forward_train(model, ids, targets)
    assert rows == [0, L - 4, 7]  # nothing of segment 0, the 12 scored of segment 1, all 7 of the last
    nothing = torch.full_like(targets, -100)  # nothing scored: zero, not NaN
    assert float(forward_train(model, ids, nothing).detach()) == 0.0


def test_rows_of_a_batch_train_as_they_would_one_by_one():
    """Three sequences side by side (last segments of different lengths, padded; one segment
    without gradient; a segment repeated in two rows, once in the third) give each row's own loss,
    and the gradient of the batch is the mean of the rows' gradients."""
    model = build_model(tiny_config(), seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.fill_(0.0)  # the memory read counts
    r = random.Random(4)
    rows = []
    for last in (6, 11, 16):
        ids = [r.randrange(10, 90) for _ in range(3 * L + last)]
        targets = [-100] * (3 * L) + ids[1 : last + 1]
        targets[3 * L] = -100  # one unscored token in the last segment
        rows.append((ids, targets))
    constant, counts = {0, 1}, [3, 1, 5]

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    singles, single_grads = [], []
    for (ids, targets), c in zip(rows, counts):
        loss = forward_train(model, torch.tensor([ids]), torch.tensor([targets]), constant=constant, repeat={1: c})
        loss.backward()
        singles.append(float(loss.detach()))
        single_grads.append(grads())
    width = max(len(i) for i, _ in rows)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in rows])
    targets = torch.tensor([t + [-100] * (width - len(t)) for _, t in rows])
    per_row = forward_train(model, ids, targets, constant=constant, repeat={1: counts}, per_row=True)
    assert per_row.shape == (3,)
    assert per_row.detach().tolist() == pytest.approx(singles, rel=1e-5)
    assert len(set(singles)) == 3  # the rows differ: a mixed-up row would be seen
    per_row.mean().backward()
    batched = grads()
    assert set(batched) == set(single_grads[0])
    for n, g in batched.items():
        want = sum(s[n] for s in single_grads) / 3
        assert torch.allclose(g, want, rtol=1e-4, atol=1e-6), n
    # the default reduction is the mean of the rows, not of their tokens (the rows score 5, 10, 15)
    mean = forward_train(model, ids, targets, constant=constant, repeat={1: counts})
    assert float(mean.detach()) == pytest.approx(sum(singles) / 3, rel=1e-5)


class BatchedRecallData(RecallData):
    """RecallData drawn in batches of the same layout (`TrainingData.batch`'s contract)."""

    def __init__(self, pool=6):
        super().__init__(pool=pool)

    def batch(self, index, size):
        return [self.items[(index * size + j) % len(self.items)] for j in range(size)]


def test_a_run_in_batches_trains_resumes_and_logs_every_sequence(tmp_path):
    def trainer(out):
        cfg = TrainConfig(out=str(out), steps=6, accumulate=2, batch=3, warmup=2, save_every=2, lr=1e-2,
                          rank=4, alpha=8, gate_lr=3e-2)
        return Trainer(cfg, engine=Engine(build_model(tiny_config(), seed=0)), data=BatchedRecallData())

    whole = trainer(tmp_path / "whole")
    whole.run()
    log = list(csv.DictReader(open(tmp_path / "whole" / "log.csv")))
    assert len(log) == 6 * 2 * 3 and int(log[-1]["tokens_seen"]) == 36 * (L + 6)
    assert len({r["loss"] for r in log if r["step"] == "1"}) > 1  # each sequence its own loss
    first = sum(float(r["loss"]) for r in log[:6]) / 6
    last = sum(float(r["loss"]) for r in log[-6:]) / 6
    assert last < first
    part = trainer(tmp_path / "part")

    def crash(t):
        if t.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        part.run(on_step=crash)
    resumed = trainer(tmp_path / "part")
    resumed.run()
    a, b = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    for n, p in a.items():
        assert torch.equal(p, b[n]), n
    with pytest.raises(ValueError, match="batch"):
        Trainer(TrainConfig(out=str(tmp_path / "bad"), batch=0), engine=Engine(build_model(tiny_config(), seed=0)),
                data=BatchedRecallData())


def test_the_speed_table_counts_fewer_operators_for_sequences_side_by_side(tmp_path):
    from lab.train import speed

    cfg = TrainConfig(out=str(tmp_path), steps=10, accumulate=4, rank=4, alpha=8, warmup=1)
    t = Trainer(cfg, engine=Engine(build_model(tiny_config(), seed=0)), data=BatchedRecallData())
    rows = speed.measure(t, [(1, 0), (4, 0), (1, 2), (1, 0, "autograd")], 4, rounds=1, log=lambda *a, **k: None)
    one, four, kept, autograd = rows
    assert one["tokens"] == four["tokens"] == kept["tokens"] == autograd["tokens"] == 4 * (L + 6)
    assert (one["head"], autograd["head"]) == ("chunked", "autograd") and lab.train.unroll.CHUNKED_HEAD
    assert (one["passes"], four["passes"], kept["keep"]) == (4, 1, 2)
    assert four["operators"] < 0.4 * one["operators"]  # launched once for four sequences, not four times
    assert kept["operators"] < one["operators"]  # no forward pass recomputed
    assert all(r["peak_mib"] > 0 for r in rows)
    lines = speed.table(rows).splitlines()
    assert len(lines) == 6 and lines[2].startswith("| 1 × 4 | 0 | chunked | 88 |") and "| 1.00 |" in lines[2]
    assert lines[5].startswith("| 1 × 4 | 0 | autograd | 88 |")
    with pytest.raises(ValueError, match="split"):
        speed.measure(t, [(1, 0), (3, 0)], 4)


def test_kept_activations_give_the_same_gradients_without_recomputing():
    """`keep_activations`: the last k differentiated segments are not recomputed in the backward
    pass (one call of `segment` each instead of two), and the loss and gradients are the same."""
    model = build_model(tiny_config(), seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.fill_(0.0)
    r = random.Random(6)
    ids = torch.tensor([[r.randrange(10, 90) for _ in range(4 * L + 6)]])
    targets = ids.roll(-1, 1).masked_fill(torch.arange(ids.shape[1]) < 2 * L, -100)  # segments 2-4 scored
    calls = []
    segment = model.segment
    model.segment = lambda idx, mem, *a, **k: calls.append(idx.shape[1]) or segment(idx, mem, *a, **k)

    def run(keep):
        calls.clear()
        model.zero_grad(set_to_none=True)
        loss = forward_train(model, ids, targets, constant={1}, keep_activations=keep)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, list(calls)

    loss0, g0, calls0 = run(0)
    assert len(calls0) == 1 + 2 * 4  # the constant segment once, four differentiated ones twice
    for keep, runs in ((2, 1 + 2 * 2 + 2), (9, 1 + 4)):
        loss, g, c = run(keep)
        assert len(c) == runs and loss == pytest.approx(loss0, rel=1e-6)
        for n in g0:
            assert torch.allclose(g[n], g0[n], rtol=1e-5, atol=1e-7), n



def test_the_training_command_runs_again_on_huge_pages(monkeypatch):
    """`python -m lab.train` starts itself again with THP_MEM_ALLOC_ENABLE=1 (PyTorch reads it
    once, before the process's first tensor), unless the caller chose a value."""
    import os
    import sys

    from lab.train import __main__ as cmd

    calls = []
    monkeypatch.setattr(os, "execv", lambda path, args: calls.append((path, args)))
    monkeypatch.setattr(sys, "argv", ["/x/lab/train/__main__.py", "--config", "r.json"])
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    cmd.with_huge_pages()
    assert calls == [(sys.executable, [sys.executable, "-m", "lab.train", "--config", "r.json"])]
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the caller's choice stands, nothing runs again
    cmd.with_huge_pages()
    assert len(calls) == 1 and os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


@pytest.mark.parametrize("kl", [False, True])
def test_a_frozen_head_s_loss_keeps_no_logits_and_gives_autograd_s_values(kl):
    """With the vocabulary head frozen, the loss is made a chunk of logits at a time and only the
    hidden states' gradient (N × C) is kept for the backward pass, never the logits (N × V): the same
    losses and gradients as autograd through every logit, cross-entropy and KL to a teacher alike."""
    from lab.train.unroll import HEAD_CHUNK, head_loss

    g = torch.Generator().manual_seed(0)
    N, C, V = HEAD_CHUNK + 300, 24, 5000  # two chunks, the second partial
    weight = torch.randn(V, C, generator=g) * 0.3
    h0 = torch.randn(N, C, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    teacher = torch.randn(N, C, generator=g) if kl else None
    w = torch.rand(N, generator=g)

    def run(head):
        h = h0.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            losses = head_loss(h, head, targets, teacher)
        (losses * w).sum().backward()
        return losses.detach(), h.grad, max(saved)

    want, want_grad, autograd_kept = run(weight.clone().requires_grad_())  # autograd's way
    got, got_grad, kept = run(weight)  # frozen: chunked
    assert autograd_kept >= N * V  # the logits
    assert kept == N * C
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)
    if kl:
        assert float(got.min()) >= -1e-6  # a KL
    with torch.no_grad():  # no gradient asked: the same losses
        torch.testing.assert_close(head_loss(h0, weight, targets, teacher), want, rtol=1e-5, atol=1e-6)


class BookData:
    """`lm` examples of three segments and `tail` tokens, every token scored."""

    def __init__(self, seed=0, pool=3, tail=5):
        r = random.Random(seed)
        self.items = []
        for _ in range(pool):
            seq = [r.randrange(10, 90) for _ in range(3 * L + tail + 1)]
            self.items.append(Example("lm", seq[:-1], seq[1:], 3))

    def example(self, index):
        return self.items[index % len(self.items)]


def test_book_text_learns_from_a_teacher_that_reads_the_text_before_it(tmp_path):
    """`context_teacher`: the plain model (every gate shut) reading each segment together with the
    tokens before it in a window of that many; the `lm` loss is KL from it."""
    base = build_model(tiny_config(), seed=0)
    Engine(base).export_hf(tmp_path / "model")

    def trainer(out, window, data=None, **kw):
        cfg = TrainConfig(out=str(tmp_path / out), model=str(tmp_path / "model"), context_teacher=window, rank=4,
                          alpha=8, accumulate=1, steps=30, lr=1e-2, gate_lr=5e-2, warmup=1, dtype="float32", **kw)
        e = load_model(tmp_path / "model", device="cpu", dtype="float32", adapter=None)
        return Trainer(cfg, engine=e, data=data or BookData())

    # a window of one segment, the model's memory shut, whole segments: the teacher reads what the
    # model reads, nothing to learn
    t = trainer("same", L, BookData(tail=0), gate_init=-100.0)
    assert t.context_teacher.config.segment_length == L
    assert all(float(layer.self_attn.memory_gate.max()) == -100.0 for layer in t.context_teacher.model.layers)
    assert abs(t.train_step()[0]["loss"]) < 1e-5

    # a window of two segments: each segment is read with the one before it (the last, short one with
    # the tail of the one before), hidden states for every token of the sequence
    t = trainer("run", 2 * L)
    ids = torch.tensor([t.data.example(0).ids])
    hidden = t.context_hidden(ids)
    assert sorted(hidden) == [0, 1, 2, 3]
    for i, (start, end) in enumerate([(0, L), (0, 2 * L), (L, 3 * L), (L + 5, 3 * L + 5)]):
        with torch.no_grad():
            h, _ = t.context_teacher.segment(ids[:, start:end], None)
        first = i * L - start
        assert torch.equal(hidden[i], h[:, first:]), i
    assert hidden[3].shape[1] == 5
    # the loss logged is KL(teacher ‖ model) over every token; the model starts with its memory nearly
    # shut, so the first segment, with nothing before it, is already almost the teacher's
    ex = t.data.example(0)
    with torch.no_grad():
        expect = forward_train(t.model, ids, torch.tensor([ex.targets]), teacher=hidden)
        first_segment = forward_train(t.model, ids[:, :L], torch.tensor([ex.targets[:L]]), teacher={0: hidden[0]})
    assert float(first_segment) < 1e-3 < float(expect)
    first = t.train_step()[0]["loss"]
    assert first == pytest.approx(float(expect), rel=1e-4)
    losses = [t.train_step()[0]["loss"] for _ in range(29)]
    assert sum(losses[-3:]) / 3 < 0.7 * first, (first, losses)
    # other tasks keep their cross-entropy
    t.data = RecallData()
    ex = t.data.example(t.step)
    with torch.no_grad():
        expect = float(forward_train(t.model, torch.tensor([ex.ids]), torch.tensor([ex.targets])))
    assert t.train_step()[0]["loss"] == pytest.approx(expect, rel=1e-4)
