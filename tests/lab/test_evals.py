"""The evaluation commands end to end on a handful of tiny items, with a tiny random model that has
the built-in tokenizer: the tables and the JSON have their shape. (The numbers mean nothing here.)"""

import json
import re

import numpy as np
import pytest
import torch

from lab.evals import common, needle
from lab.evals.__main__ import main
from infini_reader.engine.attribution import key_mass

from .conftest import SHARED

pytestmark = pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_reader, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-eval-model")
    tiny_reader.export_hf(d)
    return d


def run_eval(capsys, *argv):
    code = main([*argv, "--threads", "1"])
    out, _ = capsys.readouterr()
    assert code == 0
    return out


def table_rows(out: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("|") and not line.startswith("| -")
    ]


def test_needle(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "needle.json"
    argv = "needle --lengths 600,1K --n 2 --depths 0.25,0.75 --fused-weights 0.1 --max-new-tokens 4 --base-tokens 200"
    out = run_eval(capsys, *argv.split(), "--model", str(tiny_model_dir), "--out", str(out_json))
    assert "**Needle: answers and citations**" in out and "**Needle: memory attribution variants" in out
    data = json.loads(out_json.read_text())
    assert [x["length"] for x in data["lengths"]] == [600, 1024]
    assert len(data["items"]) == 2 * 2 * 2  # lengths × facts × (direct, paraphrase)
    for it in data["items"]:
        assert set(it["modes"]) == {"bm25", "memory", "fused", "fused w=0.1", "hybrid", "embeddings"}
        for name, m in it["modes"].items():
            assert {"top1", "top3", "segment_top3", "citations"} <= set(m)
            assert ("answer" in m) == (name not in ("fused w=0.1", "embeddings"))  # citations only
        assert set(it["base"]) == {"answer", "correct", "fact_in_window"}
        assert "÷ neutral question, all layers" in it["attribution_rank"]
        segments = next(x["segments"] for x in data["lengths"] if x["length"] == it["length"])
        assert all(0 <= r < segments for r in it["attribution_rank"].values())
    rows = table_rows(out)
    systems = [r[3] for r in rows if r[0] in ("direct", "paraphrase")]
    assert systems.count("fused") == systems.count("bm25") == systems.count("memory") == 4
    assert systems.count("fused w=0.1") == 4
    assert sum(s.startswith("base model, last 200 tokens") for s in systems) == 4
    assert [t["title"] for t in data["tables"]][:1] == ["Needle: answers and citations"]


def test_qa_through_the_module_command(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "qa.json"
    argv = "qa --n 3 --per-story 2 --max-chars 2500 --max-new-tokens 4 --base-tokens 200 --threads 1"
    code = main([*argv.split(), "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out_json)])
    out, _ = capsys.readouterr()
    assert code == 0
    data = json.loads(out_json.read_text())
    assert len(data["items"]) == 3 and len(data["stories"]) == 2
    for it in data["items"]:
        assert set(it["answers"]) == set(it["rougeL"]) == {"hybrid", "fused", "bm25", "memory-only", "base"}
        assert it["references"] and all(0.0 <= v <= 1.0 for v in it["rougeL"].values())
    rows = table_rows(out)
    assert rows[0] == ["system", "n", "ROUGE-L"] and len(rows) == 6


def test_summary(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "summary.json"
    argv = "summary --n 2 --segment-length 1024 --max-chars 1500 --base-tokens 200"
    systems = "pipeline,pipeline-full,lead,base"
    out = run_eval(capsys, *argv.split(), "--systems", systems, "--model", str(tiny_model_dir), "--out", str(out_json))
    data = json.loads(out_json.read_text())
    assert len(data["items"]) == 2
    for it in data["items"]:
        assert set(it["summaries"]) == {"pipeline", "pipeline-full", "lead", "base"}
        assert it["summaries"]["pipeline-full"] == it["summaries"]["pipeline"]  # one part: nothing to stop
        assert set(it["rouge"]["lead"]) == {"rouge1", "rouge2", "rougeL"}
        assert set(it["seconds"]) == {"ingest", "pipeline", "pipeline-full", "base"}
    rows = table_rows(out)
    assert rows[0] == ["system", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "words", "sentences supported",
                       "word pairs in the story", "invented names /100 words", "s/story"] and len(rows) == 5
    for it in data["items"]:  # the lead is the story's own words: every pair in it, no name invented
        assert it["faithful"]["lead"]["invented_names_per_100w"] == 0.0
        assert it["faithful"]["lead"]["pairs_in_story"] == 1.0
    assert [r[0].split(":")[0].split(",")[0] for r in rows[1:]] == ["pipeline", "pipeline", "lead", "base model"]
    assert rows[3][-1] == "" and all(float(r[-1]) >= 0 for r in (rows[1], rows[2], rows[4]))


# ---- the parts ----


def test_planted_facts_sit_at_their_depths(builtin_tokenizer_engine):
    e = builtin_tokenizer_engine
    text = " ".join(f"Sentence number {i} is here." for i in range(400))
    facts = needle.FACTS[:3]
    planted = needle.plant(e, text, facts, [0.1, 0.5, 0.9])
    where = [planted.find(f.text) / len(planted) for f in facts]
    assert all(w > 0 for w in where) and where == sorted(where)
    assert np.allclose(where, [0.1, 0.5, 0.9], atol=0.03)
    assert len(planted) == len(text) + sum(len(f.text) + 1 for f in facts)  # inserted, nothing lost


def test_key_word_match():
    assert common.has_key("It is Cardamom, I think.", "cardamom")
    assert common.has_key("tins of peppermints", "peppermint")
    assert not common.has_key("the willowy girl", "willow")


def test_shared_prefix_answers_equal_plain_generation(tiny_reader):
    base = common.base_engine(tiny_reader, window=512)
    text = "The lighthouse keeper counted the ships. " * 20
    prompts = [[{"role": "user", "content": f"{text}\n\nQuestion: {q}"}] for q in ("Who?", "How many ships?")]
    got = common.answers_sharing_prefix(base, prompts, max_new_tokens=6)
    want = ["".join(base.generate(p, None, max_new_tokens=6)).strip() for p in prompts]
    assert got == want
    for layer in base.model.model.layers:  # the memory is shut
        assert float(layer.self_attn.memory_gate.detach().max()) == -100.0


def test_key_sums_per_head_average_to_the_stored_summaries(tiny_reader):
    ids = np.arange(200) % 5000 + 100
    stored = []
    with common.key_sums_per_head(tiny_reader) as per_head:
        tiny_reader.ingest(ids, tiny_reader.new_memory(), on_segment=lambda i, s: stored.append(s.numpy()))
    assert len(per_head) == len(stored) == 4  # 200 tokens in segments of 64
    for whole, avg in zip(per_head, stored):
        assert whole.shape == (2, 2, 16)  # (layers, kv heads, D)
        assert np.allclose(whole.mean(axis=1), avg, rtol=1e-5)
    assert "segment" not in vars(tiny_reader.model)  # the spy is gone


def test_key_mass_maps_query_heads_to_their_kv_heads():
    rng = np.random.default_rng(0)
    q = rng.random((2, 4, 3))  # (layers, H=4, D)
    z = rng.random((5, 2, 2, 3))  # (segments, layers, Hkv=2, D)
    tokens = np.array([1, 2, 3, 4, 5])
    mass = key_mass(q, z, tokens)
    assert mass.shape == (5, 2, 4)
    assert np.isclose(mass[3, 1, 2], q[1, 2] @ z[3, 1, 1] / 4)  # query head 2 reads kv head 1
    flat = key_mass(q.mean(1), z.mean(2), tokens)
    assert flat.shape == (5, 2) and np.isclose(flat[0, 0], q[0].mean(0) @ z[0, 0].mean(0))


def test_passkey_grid(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "passkey.json"
    out = run_eval(capsys, *"passkey --lengths 200,300 --keys 2".split(), "--model", str(tiny_model_dir),
                   "--out", str(out_json))
    rows = table_rows(out)
    # four tables: the exact number, the key's digits first, in some order, the share of its digits
    header = ["length", "start", "middle", "end", "all"]
    assert rows[0] == rows[3] == rows[6] == rows[9] == header
    assert [r[0] for r in rows if r != header] == ["200", "300"] * 4
    data = json.loads(out_json.read_text())
    assert len(data["items"]) == 2 * 3 * 2 and len(data["tables"]) == 4
    for it in data["items"]:
        assert len(it["key"]) == 5
        number = re.search(r"\d+", it["answer"])
        number = number.group() if number else ""
        assert it["correct"] == (number == it["key"]) and it["key_digits"] == (number[:5] == it["key"])
        assert it["tokens"] == it["length"]
    share = [it["digit_share"] for it in data["items"] if it["length"] == 300]
    assert rows[-1][-1] == f"{100 * sum(share) / len(share):.0f}%"


def test_passkey_keys_read_side_by_side_give_the_same_answers(capsys, tmp_path, tiny_model_dir, monkeypatch):
    """`--batch`: the keys of a depth read together from the earliest one's boundary; the same keys
    are asked of the same memories as one by one. (The tiny model's memory is all but shut, so its
    answer here is a digest of the memory it was given: a row read from the wrong boundary, or
    given another row's memory, answers differently.)"""
    from lab.evals import passkey
    from lab.evals.passkey import _groups

    monkeypatch.setattr(passkey, "answer", lambda e, memory, q: f"{float(memory.M[-1].double().sum()):.6g}")
    got = {}
    for batch in (1, 3):
        out_json = tmp_path / f"passkey-{batch}.json"
        run_eval(capsys, *f"passkey --lengths 300 --keys 3 --batch {batch}".split(), "--model", str(tiny_model_dir),
                 "--out", str(out_json))
        got[batch] = [(it["depth"], it["key"], it["answer"]) for it in json.loads(out_json.read_text())["items"]]
    assert got[3] == got[1] and len(got[1]) == 9
    assert len({a for _, _, a in got[1]}) == 9  # every key its own memory
    plan = [(d,) for d in ["start"] * 3 + ["middle"] * 3 + ["end"] * 3]
    assert _groups(plan, 2) == [[0, 1], [2], [3, 4], [5], [6, 7], [8]]  # a group never spans two depths
    assert _groups(plan, 1) == [[i] for i in range(9)]


def test_a_stopped_passkey_run_resumes_where_it_stopped(capsys, tmp_path, tiny_model_dir, monkeypatch):
    """`--resume`: the file written after every key keeps what a stopped run measured; the same
    command with `--resume` reads only the rest and ends with the grid an unbroken run gives."""
    from lab.evals import passkey

    real = passkey.answer
    asked = []

    def counting(e, memory, q):
        asked.append(1)
        if stop_after is not None and len(asked) > stop_after:
            raise KeyboardInterrupt  # the session ends mid-run
        return real(e, memory, q)

    monkeypatch.setattr(passkey, "answer", counting)
    grid = [*"passkey --lengths 200,300 --keys 2".split(), "--model", str(tiny_model_dir)]
    stop_after = None
    whole = tmp_path / "whole.json"
    run_eval(capsys, *grid, "--out", str(whole))
    assert len(asked) == 12

    parts = tmp_path / "parts.json"
    asked.clear()
    stop_after = 8  # all of 200 and two keys of 300
    with pytest.raises(KeyboardInterrupt):
        main([*grid, "--out", str(parts), "--threads", "1"])
    capsys.readouterr()
    stopped = json.loads(parts.read_text())
    assert stopped["complete"] is False and len(stopped["items"]) == 8

    # another grid in the same file is refused and leaves it as it was
    with pytest.raises(SystemExit, match="keys"):
        main([*"passkey --lengths 200,300 --keys 3".split(), "--model", str(tiny_model_dir), "--out", str(parts),
              "--resume", "--threads", "1"])
    assert json.loads(parts.read_text()) == stopped

    asked.clear()
    stop_after = None
    # the same grid written another way ("0.29296875K" is 300 tokens) resumes it
    same_grid = [*"passkey --lengths 200,0.29296875K --keys 2".split(), "--model", str(tiny_model_dir)]
    out = run_eval(capsys, *same_grid, "--out", str(parts), "--resume")
    assert len(asked) == 4  # only the keys not yet measured
    assert "8 of 6" not in out and "2 of 6 keys kept" in out and "6 of 6 keys kept" in out
    a, b = json.loads(whole.read_text()), json.loads(parts.read_text())
    same = ("index", "length", "depth", "key", "answer", "correct", "digit_share")
    assert [{k: it[k] for k in same} for it in b["items"]] == [{k: it[k] for k in same} for it in a["items"]]
    assert b["complete"] is True and b["tables"] == a["tables"]
    assert b["seconds"] > stopped["seconds"]


@pytest.mark.parametrize("key, answer, want", [
    ("84384", "84384.", (True, True, True, 1.0)),
    ("60494", "6049494", (False, True, True, 1.0)),  # found, not stopped
    ("38631", "33186.", (False, False, True, 1.0)),  # the digits, out of order
    ("42834", "42428.", (False, False, False, 0.8)),  # 4, 2, 8 and the second 4; a 2 for the 3
    ("77013", "7013.", (False, False, False, 0.8)),  # one 7 dropped
    ("12345", "I do not know.", (False, False, False, 0.0)),
])
def test_passkey_scores_near_misses(key, answer, want):
    from lab.evals.passkey import score

    sc = score(key, answer)
    assert (sc["correct"], sc["key_digits"], sc["same_digits"]) == want[:3]
    assert sc["digit_share"] == pytest.approx(want[3])


def test_passkey_shared_prefix_gives_the_memory_of_a_whole_reading(tiny_reader):
    """The evaluation reuses the memory of the filler before the key's segment: exact."""
    from lab.train.data import passkey_ids

    hay, _ = passkey_ids(tiny_reader.tokenizer, "31337", 300, 0.8)
    plain, _ = passkey_ids(tiny_reader.tokenizer, "00000", 300, 1.0)
    differ = next(i for i, (a, b) in enumerate(zip(hay, plain)) if a != b)
    b = differ // 64 * 64
    assert b >= 128  # several segments shared
    whole = tiny_reader.ingest(hay, tiny_reader.new_memory())
    reused = tiny_reader.ingest(hay[b:], tiny_reader.ingest(plain[:b], tiny_reader.new_memory()))
    assert reused.to_bytes() == whole.to_bytes()


def test_ppl_per_segment(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "ppl.json"
    out = run_eval(capsys, *"ppl --books 1 --segments 4".split(), "--model", str(tiny_model_dir),
                   "--out", str(out_json))
    rows = table_rows(out)
    assert rows[0] == ["segment", "memory on", "memory shut", "gain", "memory empty", "gain"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "4–4"]
    data = json.loads(out_json.read_text())
    first = data["per_segment"][0]
    # nothing in the memory yet: the first segment reads the same with the memory on or shut, and
    # exactly the same with it on or empty (the same computation)
    assert first["ppl_memory"] == pytest.approx(first["ppl_shut"], rel=0.05)
    assert first["ppl_memory"] == pytest.approx(first["ppl_empty"], rel=1e-6)
    assert any(p["ppl_memory"] != pytest.approx(p["ppl_empty"], rel=1e-6) for p in data["per_segment"][1:])
    assert all(p["ppl_memory"] > 1 for p in data["per_segment"])
    # fewer than four segments: no summary row over segments that were not read (it printed 1.00)
    short = run_eval(capsys, *"ppl --books 1 --segments 2".split(), "--model", str(tiny_model_dir))
    assert [r[0] for r in table_rows(short)[1:]] == ["1", "2"]


def test_segment_nll_carries_the_memory_or_reads_each_segment_alone(tiny_reader):
    import copy

    from lab.evals.ppl import segment_nll
    from infini_reader.engine import Engine

    model = copy.deepcopy(tiny_reader.model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.fill_(0.0)  # the memory read counts
    e = Engine(model, tiny_reader.tokenizer, "tiny", tiny_reader.tokenizer_json, tiny_reader.chat)
    ids = torch.randint(10, 5000, (3 * 64 + 1,), generator=torch.Generator().manual_seed(0))
    on, alone = segment_nll(e, ids)
    assert [n for _, n in on] == [n for _, n in alone] == [64, 64, 64]
    none, only_alone = segment_nll(e, ids, memory=False)
    assert none == [] and [x for x, _ in only_alone] == pytest.approx([x for x, _ in alone], rel=1e-6)
    # the memory counts from the second segment on (float32: a shut or ignored memory gives the same bits)
    assert on[0] == alone[0] and abs(on[1][0] - alone[1][0]) > 1e-2


def test_full_context_reads_each_segment_with_the_tokens_before_it(tiny_reader):
    from lab.evals.common import base_engine
    from lab.evals.ppl import full_context_nll, segment_nll

    L = tiny_reader.config.segment_length
    ids = torch.randint(10, 5000, (4 * L + 1,), generator=torch.Generator().manual_seed(1))
    alone = segment_nll(base_engine(tiny_reader, window=L), ids, memory=False)[1]
    # a window of one segment sees nothing before it: every segment exactly as read alone
    same = full_context_nll(base_engine(tiny_reader, window=L), ids, L)
    assert [n for _, n in same] == [L] * 4
    assert [x for x, _ in same] == pytest.approx([x for x, _ in alone], rel=1e-5)
    # a window of two: the first segment as alone, each later one read after the segment before it
    two = base_engine(tiny_reader, window=2 * L)
    wider = full_context_nll(two, ids, L)
    assert wider[0][0] == pytest.approx(alone[0][0], rel=1e-5)
    assert all(abs(w - a) > 1e-3 for (w, _), (a, _) in zip(wider[1:], alone[1:]))
    with torch.no_grad():
        h, _ = two.model.segment(ids[None, L : 3 * L], None)
        direct = torch.nn.functional.cross_entropy(two.model.lm_head(h[0, L:]).float(), ids[2 * L + 1 : 3 * L + 1],
                                                   reduction="sum")
    assert wider[2][0] == pytest.approx(float(direct), rel=1e-5)


def test_ppl_full_context_column(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "ppl.json"
    out = run_eval(capsys, *"ppl --books 1 --segments 3 --full-context".split(), "--model", str(tiny_model_dir),
                   "--out", str(out_json))
    rows = table_rows(out)
    assert rows[0][6:] == ["full context (8,192)", "gain"]
    per = json.loads(out_json.read_text())["per_segment"]
    # the first segment has nothing before it: full context reads it as the shut memory does
    assert per[0]["ppl_full_context"] == pytest.approx(per[0]["ppl_shut"], rel=1e-4)
    assert per[1]["ppl_full_context"] != pytest.approx(per[1]["ppl_shut"], rel=1e-4)


def test_chat_check_compares_the_base_and_an_adapter(capsys, tmp_path, tiny_model_dir):
    from infini_reader.engine.checkpoint import load_state_dict_into, read_hf_directory
    from infini_reader.engine.model import InfiniTransformer
    from tests.conftest import write_nudged_adapter

    cfg, tensors = read_hf_directory(tiny_model_dir)
    model = InfiniTransformer.for_loading(cfg)
    load_state_dict_into(model, tensors, "tiny")
    write_nudged_adapter(model, tmp_path / "a.safetensors", by=0.1)
    out_json = tmp_path / "chat.json"
    out = run_eval(capsys, *"chat --qa 2 --max-new-tokens 3".split(), "--model", str(tiny_model_dir),
                   "--adapter", str(tmp_path / "a.safetensors"), "--out", str(out_json))
    rows = table_rows(out)
    assert rows[0] == ["model", "instructions", "excerpt QA"] and len(rows) == 3
    assert rows[1][0].startswith("base") and rows[2][0].startswith("adapted")
    assert rows[1][0].split(",")[-1] != rows[2][0].split(",")[-1]  # two different fingerprints
    data = json.loads(out_json.read_text())
    assert sum(i["kind"] == "instruction" for i in data["items"]) == 2 * 30


def test_distance_is_zero_for_the_teacher_and_counts_only_the_answers(capsys, tmp_path, tiny_model_dir):
    from infini_reader.engine import load_model
    from tests.conftest import write_nudged_adapter

    from lab.evals.distance import distance

    adapter = tmp_path / "nudged.safetensors"
    write_nudged_adapter(load_model(str(tiny_model_dir), adapter=None).model, adapter, by=0.2)
    out = run_eval(capsys, "distance", "--model", str(tiny_model_dir), "--adapter", f"none,{adapter}",
                   "--teacher", "none", "--books", "1", "--out", str(tmp_path / "d.json"))
    rows = table_rows(out)
    assert rows[0] == ["model", "book text", "the check's answers"]
    assert rows[1][1:] == ["0.000", "0.000"]  # the teacher against itself
    assert float(rows[2][1]) > 0 and float(rows[2][2]) > 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["items"]["none"] == {"book_text": 0.0, "answers": 0.0}
    # the answer's positions alone: the prompt's tokens before the answer do not count
    teacher = load_model(str(tiny_model_dir), adapter=None).model
    other = load_model(str(tiny_model_dir), adapter=adapter).model
    ids = [20, 21, 22, 23, 24]
    d = distance(teacher, other, [ids], [(ids, 3)])
    with torch.no_grad():
        t = torch.tensor([ids])
        p = torch.log_softmax(teacher.lm_head(teacher.segment(t, None)[0]).float(), -1)[0, 2:4]
        q = torch.log_softmax(other.lm_head(other.segment(t, None)[0]).float(), -1)[0, 2:4]
    assert d["answers"] == pytest.approx(float((p.exp() * (p - q)).sum(-1).mean()), rel=1e-4)


def test_the_shut_memory_copy_of_a_model_with_memory_projections(tiny_reader):
    """`base_engine` (the memory shut, one long window) takes a model whose adapter has memory
    projections: they serve only the memory path, so the copy reads as the model's local attention."""
    import copy

    from lab.evals.common import base_engine
    from infini_reader.engine import Engine
    from infini_reader.engine.adapter import add_memory_projection

    plain = base_engine(tiny_reader, window=64)
    model = copy.deepcopy(tiny_reader.model)
    add_memory_projection(model, rank=2, alpha=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_proj.q_B.fill_(0.3)
    e = Engine(model, tiny_reader.tokenizer, "tiny", tiny_reader.tokenizer_json, tiny_reader.chat)
    ids = torch.randint(10, 5000, (50,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(base_engine(e, window=64).logits(ids), plain.logits(ids), rtol=1e-5, atol=1e-5)


def test_indexing_times_a_book_and_its_first_answer(capsys, tmp_path, tiny_model_dir):
    from infini_reader.app.core import embeddings

    if embeddings.default_embedder() is None:
        pytest.skip("the embedding model is not installed")
    out_json = tmp_path / "indexing.json"
    out = run_eval(capsys, *"indexing --tokens 2K".split(), "--model", str(tiny_model_dir), "--out", str(out_json))
    assert "**Indexing a book" in out
    (row,) = json.loads(out_json.read_text())["rows"]
    assert row["passages"] > 1 and row["index_s"] == pytest.approx(row["parse_s"] + row["store_fts_s"] + row["embed_s"])
    assert row["answer"] and row["first_answer_s"] > 0


def test_needle_index_only_asks_a_book_that_was_not_read(capsys, tmp_path, tiny_model_dir):
    out_json = tmp_path / "needle.json"
    argv = "needle --index-only --lengths 600 --n 2 --depths 0.25,0.75 --no-base --max-new-tokens 4"
    out = run_eval(capsys, *argv.split(), "--model", str(tiny_model_dir), "--out", str(out_json))
    data = json.loads(out_json.read_text())
    assert data["lengths"][0]["memory_pass"] is False and data["lengths"][0]["segments"] >= 1
    for it in data["items"]:
        assert set(it["modes"]) == {"bm25", "hybrid", "embeddings"} and it["attribution_rank"] == {}
        assert "answer" in it["modes"]["hybrid"] and "answer" in it["modes"]["bm25"]
    systems = {r[3] for r in table_rows(out) if r[0] in ("direct", "paraphrase")}
    assert systems == {"bm25", "hybrid", "embeddings"}


def test_spans_reads_answers_out_of_the_dev_facts_sentences(capsys, tmp_path, tiny_model_dir):
    from lab.evals import spans

    out_json = tmp_path / "spans.json"
    argv = "spans --contexts 1 --fairytale 2 --cache"
    out = run_eval(capsys, *argv.split(), "", "--model", str(tiny_model_dir), "--out", str(out_json))
    assert "**Span answers on the development facts" in out and "**FairytaleQA train span questions" in out
    data = json.loads(out_json.read_text())
    n = len(spans.DEV_FACTS)
    assert [it["kind"] for it in data["items"]] == ["direct", "paraphrase"] * n
    for it in data["items"]:  # the tiny random model reads out some span of the re-read text
        assert it["answer"] and isinstance(it["correct"], bool)
    assert len(data["fairytale"]) == 2


def test_dev_facts_are_distinct_from_the_reported_ones_and_paraphrases_avoid_the_key():
    assert len(needle.DEV_FACTS) >= 16
    assert not {f.key for f in needle.DEV_FACTS} & {f.key for f in needle.FACTS}
    for f in needle.DEV_FACTS:
        assert f.key.lower() in f.text.lower() and f.key.lower() not in f.paraphrase.lower()
