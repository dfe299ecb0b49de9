"""The training examples, with the built-in tokenizer and the real data in ../shared/data."""

import json
import re
from pathlib import Path

import pytest

from infini_reader import engine
from lab.train.data import FILLER, Example, TrainingData, collate, passkey_ids
from infini_reader.app.core import models

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
L = 128


@pytest.fixture(scope="module")
def smol():
    return models.load_model("builtin", device="cpu", adapter=None)


@pytest.fixture(scope="module")
def data(smol, tmp_path_factory):
    chat = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "Give a title to this passage: “The sea was calm.”",
                                "answer": "A Calm Sea."}) + "\n")
    return TrainingData(smol.tokenizer, smol.chat, L, DATA, {"lm": 1, "passkey": 1, "needle": 1, "qa": 1, "chat": 1,
                                                                  "text": 1},
                        (1, 3), seed=7, books=2, chat_file=chat)


def decode(smol, ids):
    return smol.tokenizer.decode(ids, skip_special_tokens=False)


def test_passkey_haystack_has_the_length_and_the_key_at_its_depth(smol):
    for depth in (0.0, 0.5, 1.0):
        hay, question = passkey_ids(smol.tokenizer, "48213", 4000, depth)
        assert len(hay) == 4000
        text = decode(smol, hay)
        assert text.count("The pass key is 48213. Remember it. 48213 is the pass key.") == 1
        where = text.index("48213") / len(text)
        assert abs(where - depth) < 0.05
        assert FILLER in text and decode(smol, question).strip() == "What is the pass key? The pass key is"


def test_examples_are_a_function_of_the_index(data):
    a, b = data.example(3), data.example(3)
    assert a == b
    assert data.example(4) != a


def test_every_task_has_memory_segments_and_scores_only_its_answer(smol, data):
    seen = {}
    for i in range(80):
        ex = data.example(i)
        seen.setdefault(ex.task, ex)
        assert len(ex.ids) == len(ex.targets)
        assert ex.memory_segments * L < len(ex.ids) <= (ex.memory_segments + 1) * L
        assert ex.memory_segments >= (0 if ex.task in ("qa", "chat", "text") else 1)
        assert ex.scored > 0
    assert set(seen) == {"lm", "passkey", "needle", "qa", "chat", "text"}
    tx = seen["text"]  # book text on its own, half a segment, every token scored
    assert tx.memory_segments == 0 and len(tx.ids) == L // 2 and tx.targets[:-1] == tx.ids[1:] and tx.scored == L // 2
    lm = seen["lm"]
    assert lm.scored == len(lm.ids) and lm.targets[:-1] == lm.ids[1:]  # next-token targets
    assert lm.filler_segments(L) == set()  # every segment scored: truncation leaves book text whole
    pk = seen["passkey"]
    scored = decode(smol, [t for t in pk.targets if t != -100]).strip()
    key = scored.removesuffix(".")
    assert scored.endswith(".") and key.isdigit() and len(key) == 5  # the key, then a full stop
    memory_text = decode(smol, pk.ids[: pk.memory_segments * L])
    assert f"The pass key is {key}." in memory_text  # only the memory holds the key
    first_scored = next(i for i, t in enumerate(pk.targets) if t != -100)
    assert key not in decode(smol, pk.ids[pk.memory_segments * L : first_scored + 1])  # nor the question
    assert decode(smol, pk.ids[pk.needle_at : pk.needle_at + 12]).startswith(f" The pass key is {key}.")
    assert pk.needle_at < pk.memory_segments * L
    keep = set(range(pk.memory_segments + 1)) - pk.filler_segments(L)  # differentiated segments
    assert {pk.needle_at // L, pk.memory_segments} <= keep and len(keep) <= 3
    nd = seen["needle"]
    assert nd.needle_at >= 0 and nd.needle_at // L not in nd.filler_segments(L)
    answer = decode(smol, [t for t in nd.targets if t != -100])
    assert answer.startswith("In the ") and answer.endswith("<|im_end|>")
    place = answer.removeprefix("In the ").removesuffix(".<|im_end|>")
    assert place in decode(smol, nd.ids[: nd.memory_segments * L])  # the fact is in the memory
    ch = seen["chat"]
    assert ch.memory_segments == 0
    assert decode(smol, [t for t in ch.targets if t != -100]) == "A Calm Sea.<|im_end|>"
    assert "Give a title to this passage" in decode(smol, ch.ids)
    qa = seen["qa"]
    assert decode(smol, [t for t in qa.targets if t != -100]).endswith("<|im_end|>")


def test_far_passkeys_stand_for_long_haystacks_of_filler(smol):
    d = TrainingData(smol.tokenizer, smol.chat, L, DATA, {"passkey_far": 1}, seed=5, books=1,
                     far_tokens=(4_096, 65_536))
    lengths, key_segments = [], set()
    for i in range(40):
        ex = d.example(i)
        n_real = -(-len(ex.ids) // L)
        virtual = n_real + sum(r - 1 for r in ex.repeat.values())  # segments of the haystack it stands for
        assert n_real <= 7 and 4_096 // L - 1 <= virtual <= 65_536 // L + 1
        lengths.append(virtual)
        ks = ex.needle_at // L
        key_segments.add(ks)
        text = decode(smol, ex.ids)
        key = decode(smol, [t for t in ex.targets if t != -100]).strip().rstrip(".")
        assert text.count(f"The pass key is {key}. Remember it. {key} is the pass key.") == 1
        assert decode(smol, ex.ids[ks * L : (ks + 1) * L]).count(f"{key} is the pass key") == 1  # whole, in one segment
        assert text.startswith("There is an important info hidden")
        assert decode(smol, ex.ids[(n_real - 1) * L :]).endswith(f"What is the pass key? The pass key is {key}")
        # only pure filler segments stand for others, never the first, the key's or the question's
        assert set(ex.repeat) <= ex.filler_segments(L) - {0} and all(r >= 1 for r in ex.repeat.values())
        for j in ex.repeat:
            words = lambda t: set(re.findall(r"[a-z]+", t.lower()))
            assert words(decode(smol, ex.ids[j * L : (j + 1) * L])) <= words(FILLER)
    assert max(lengths) > 4 * min(lengths) and len(key_segments) > 1


def test_batches_share_their_layout_and_differ_in_their_content(data):
    seen = set()
    for i in range(30):
        rows = data.batch(i, 3)
        assert rows == data.batch(i, 3)  # a function of (seed, index, size)
        task = rows[0].task
        seen.add(task)
        assert {ex.task for ex in rows} == {task} and len({ex.memory_segments for ex in rows}) == 1
        if task != "chat":  # (the fixture's chat file holds one item)
            assert len({tuple(ex.ids) for ex in rows}) == 3  # three sequences, not one thrice
        b = collate(rows, L, truncate=True)
        n = rows[0].memory_segments + 1
        assert all(len(x) == len(b.ids[0]) == len(t) for x, t in zip(b.ids, b.targets))
        for ex, x, t in zip(rows, b.ids, b.targets):
            assert x[: len(ex.ids)] == ex.ids and t[: len(ex.targets)] == ex.targets
            assert set(t[len(ex.targets):]) <= {-100}  # the pad is never scored
        assert b.constant <= set(range(n - 1))
        if task == "lm":  # book text of one length in every row: nothing padded
            assert len({len(ex.ids) for ex in rows}) == 1
        if task in ("passkey", "needle"):  # the needle at one depth in every row: its segment (or two) keep
            where = {ex.needle_at // L for ex in rows}
            assert max(where) - min(where) <= 1 and where.isdisjoint(b.constant)
            assert len(b.constant) >= n - 4
    assert seen == {"lm", "passkey", "needle", "qa", "chat", "text"}


def test_far_passkeys_in_a_batch_stand_for_the_same_haystack(smol):
    d = TrainingData(smol.tokenizer, smol.chat, L, DATA, {"passkey_far": 1}, seed=5, books=1,
                     far_tokens=(4_096, 65_536))
    for i in range(10):
        rows = d.batch(i, 4)
        keys = {decode(smol, [t for t in ex.targets if t != -100]) for ex in rows}
        assert len(keys) == 4  # a key each
        assert all(ex.repeat == rows[0].repeat for ex in rows) and len({ex.needle_at // L for ex in rows}) == 1
        b = collate(rows, L, truncate=True, tail=1)
        assert b.constant == rows[0].filler_segments(L, tail=1)  # nothing more differentiated than one alone
        assert b.repeat == {j: [r] * 4 for j, r in rows[0].repeat.items()}


def test_examples_that_do_not_line_up_are_refused():
    a = Example("lm", [1] * 40, [2] * 40, 2)
    b = Example("lm", [1] * 50, [2] * 50, 3)
    with pytest.raises(ValueError, match="side by side"):
        collate([a, b], 16)
    far = Example("passkey_far", [1] * 40, [-100] * 39 + [3], 2, repeat={1: 9})
    near = Example("passkey", [1] * 40, [-100] * 39 + [3], 2, needle_at=18)
    with pytest.raises(ValueError, match="repeated"):
        collate([far, near], 16, truncate=True)


def test_selfdistill_own_questions_are_written_and_answered_by_the_base_model(tmp_path):
    from lab.train.selfdistill import KNOWLEDGE, first_question, is_excluded, main, prompts

    assert first_question("Sure, here is one:\n1. What is the capital of Peru?\nLima.") == "What is the capital of Peru?"
    assert first_question('Q: "Why is the sky blue?"') == "Why is the sky blue?"
    assert first_question("No question at all.") is None
    evals = ["What is the capital of France?", "Which planet is known as the Red Planet?"]
    assert is_excluded("what is the capital of France", evals) and is_excluded("Where is the capital of France?", evals)
    assert not is_excluded("What is the capital of Morocco?", evals)
    mixed = prompts(40, 0, DATA)
    assert all(isinstance(p, str) for p in mixed)  # the default mixture has none of them
    assert prompts(40, 0, DATA, 0.0) == mixed
    own = prompts(12, 3, DATA, own_questions=1.0)
    assert all(isinstance(p, tuple) and p[0] == "own" for p in own)
    assert {re.search(r"about (.+?)\. ", p[1]).group(1) for p in own} <= set(KNOWLEDGE)
    out = tmp_path / "own.jsonl"
    assert main(["--out", str(out), "--n", "2", "--seed", "3", "--own-questions", "1", "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:  # the base model's own question (or, failing one, the request itself), and its answer
        assert r["prompt"].endswith("?") or r["prompt"].startswith("Ask me one simple quiz question")
        assert r["answer"].strip()
    # the same questions, excluded: each item falls back to the request itself
    (tmp_path / "exclude.txt").write_text("\n".join(r["prompt"] for r in rows))
    again = tmp_path / "again.jsonl"
    main(["--out", str(again), "--n", "2", "--seed", "3", "--own-questions", "1", "--max-new-tokens", "6",
          "--exclude", str(tmp_path / "exclude.txt")])
    assert [json.loads(line)["prompt"] for line in again.read_text().splitlines()] == [p[1] for p in prompts(2, 3, DATA, 1.0)]
    # resumed after the first item, whose question was the second one's: the second is not asked twice
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text(json.dumps(rows[1]) + "\n")
    main(["--out", str(resumed), "--n", "2", "--seed", "3", "--own-questions", "1", "--max-new-tokens", "6"])
    second = json.loads(resumed.read_text().splitlines()[1])["prompt"]
    assert rows[1]["prompt"].endswith("?") and second == prompts(2, 3, DATA, 1.0)[1][1]
