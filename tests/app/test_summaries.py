"""Summaries: streamed part by part, each part stored as it finishes, continued after a stop, third
person, no instruction echoed, merged into one account. Real library and readers, a tiny model whose
words are scripted where the test looks at them."""

import threading

import pytest

from infini_reader.app.core import summaries
from infini_reader.app.core.export import export_markdown
from infini_reader.app.core.ingest import ingest_file
from infini_reader.app.core.summaries import clean, estimate, stored_notes, stored_summaries, summarize

from .conftest import write_book


def read_book(library, tiny_reader, tmp_path, chapters=2, paragraphs=12):
    *_, last = ingest_file(library, tiny_reader, write_book(tmp_path / "b.txt", chapters, paragraphs))
    return last.document_id


def scripted(monkeypatch, e, answers):
    """generate() says the next of `answers` word by word; records every prompt."""
    said = iter(answers)
    prompts = []

    def generate(prompt, memory=None, **kw):
        prompts.append(e.tokenizer.decode(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], int)
                       else prompt)
        for i, w in enumerate(next(said).split(" ")):
            yield w if i == 0 else " " + w

    monkeypatch.setattr(e, "generate", generate)
    return prompts


NOTE = "The keeper counted ships passing the rocks. A storm came in from the west. The keeper watched the lighthouse."


def test_clean_drops_echoed_instructions_first_person_and_invented_names():
    src = "The keeper counted the ships. Marmalade the cat slept on the stairs."
    text = ("Summary: The keeper counted the ships. Summarise this part in three sentences. "
            "In the end, I was left with a sense of emptiness. The Dreamwalker counted the ships. "
            "Marmalade slept on the stairs.")
    assert clean(text, src) == "The keeper counted the ships. Marmalade slept on the stairs."
    assert clean('He said: "I counted the ships." The keeper slept.', None) == \
        'He said: "I counted the ships." The keeper slept.'


@pytest.mark.parametrize("style", summaries.STYLES)
def test_parts_stream_are_stored_as_they_finish_and_a_stopped_summary_continues(tiny_reader, library, tmp_path,
                                                                               monkeypatch, style):
    doc_id = read_book(library, tiny_reader, tmp_path, chapters=1, paragraphs=16)
    n = len(summaries._parts(tiny_reader, library.document(doc_id).text[library.document(doc_id).sections[0].start:],
                             summaries._budget(tiny_reader, 12)))
    assert n >= 3
    scripted(monkeypatch, tiny_reader, [NOTE] * 20)
    cancel = threading.Event()
    seen = []
    for ev in summarize(library, tiny_reader, doc_id, 0, cancel=cancel, max_new_tokens=12, style=style):
        seen.append(ev)
        if ev.kind == "part" and ev.part == 1:
            cancel.set()  # Stop after the second part
    kinds = [e.kind for e in seen]
    assert "token" in kinds and "progress" in kinds and "done" not in kinds
    assert [e.part for e in seen if e.kind == "part"] == [0, 1]
    assert len(stored_notes(library, doc_id, tiny_reader.fingerprint, 0)) == 2
    assert 0 not in stored_summaries(library, doc_id, tiny_reader.fingerprint)
    assert "## Summaries" not in export_markdown(library, doc_id)  # the kept parts are not a summary yet
    progress = [e for e in seen if e.kind == "progress"][-1]
    assert progress.done == 2 and progress.total == n and progress.eta is not None
    assert estimate(library, tiny_reader, doc_id, 0, max_new_tokens=12, style=style).parts == n - 2

    # continued: the two finished parts come back without the model, the rest are written
    prompts = scripted(monkeypatch, tiny_reader, [NOTE] * 20)
    events = list(summarize(library, tiny_reader, doc_id, 0, max_new_tokens=12, style=style))
    parts = [e for e in events if e.kind == "part"]
    assert [p.part for p in parts] == list(range(n))
    note_prompts = [p for p in prompts if {"abstractive": "happens in it", "extractive": "Retell"}[style] in str(p)]
    assert len(note_prompts) == n - 2
    assert events[-1].kind == "done" and events[-1].section_idx is None or events[-1].section_idx == 0
    stored = stored_summaries(library, doc_id, tiny_reader.fingerprint)
    assert 0 in stored and stored_notes(library, doc_id, tiny_reader.fingerprint, 0) == []
    assert "Summarise" not in stored[0] and "I " not in stored[0]


def test_first_person_is_written_again_in_the_third_person(tiny_reader, library, tmp_path, monkeypatch):
    doc_id = read_book(library, tiny_reader, tmp_path, chapters=1, paragraphs=3)
    prompts = scripted(monkeypatch, tiny_reader, ["In the end, I was left with a sense of emptiness.",
                                                  "the keeper counted the ships passing the rocks."])
    events = list(summarize(library, tiny_reader, doc_id, 0, max_new_tokens=12, style="abstractive"))
    assert events[-1].kind == "done"
    assert events[-1].text == "In this part, the keeper counted the ships passing the rocks."
    assert "I was left" not in events[-1].text and len(prompts) == 2


def test_parts_are_merged_into_one_account_and_a_lossy_merge_is_not_kept(tiny_reader, library, tmp_path,
                                                                          monkeypatch):
    doc_id = read_book(library, tiny_reader, tmp_path, chapters=1, paragraphs=16)
    text = library.document(doc_id).text
    n = len(summaries._parts(tiny_reader, text[library.document(doc_id).sections[0].start:],
                             summaries._budget(tiny_reader, 12)))
    notes = [f"The keeper counted {k + 3} ships at lighthouse number {100 + k}." for k in range(n)]
    merged = "Then the keeper slept."  # loses every part
    prompts = scripted(monkeypatch, tiny_reader, notes + [merged] * 10)
    events = list(summarize(library, tiny_reader, doc_id, 0, max_new_tokens=12))
    assert any("consecutive parts" in str(p) for p in prompts)  # the model was asked to merge
    # the merge kept too little of each part: the parts' own sentences are kept instead, in order
    assert events[-1].kind == "done" and events[-1].text.startswith(notes[0])
    # a merge that keeps every part is the summary
    good = " ".join(f"Lighthouse number {100 + k} had {k + 3} ships counted by the keeper." for k in range(n))
    scripted(monkeypatch, tiny_reader, notes + [good] * 10)
    events = list(summarize(library, tiny_reader, doc_id, 0, redo=True, max_new_tokens=12))
    assert events[-1].text == good


def test_whole_book_streams_chapters_then_the_book(tiny_reader, library, tmp_path, monkeypatch):
    doc_id = read_book(library, tiny_reader, tmp_path, chapters=2, paragraphs=3)
    scripted(monkeypatch, tiny_reader, [NOTE] * 30)
    est = estimate(library, tiny_reader, doc_id, None, max_new_tokens=12)
    assert est.parts == 2 and est.seconds >= 0 and est.words()
    events = list(summarize(library, tiny_reader, doc_id, None, max_new_tokens=12))
    assert [e.section_idx for e in events if e.kind == "done"] == [0, 1, None]
    stored = stored_summaries(library, doc_id, tiny_reader.fingerprint)
    assert set(stored) == {0, 1, None}


def test_a_note_cut_by_the_token_limit_is_kept_without_its_stub(tiny_reader, library, tmp_path, monkeypatch):
    """The last, unfinished sentence of a note the token limit cut is not stored (a one-part chapter)."""
    doc_id = read_book(library, tiny_reader, tmp_path, chapters=3, paragraphs=1)
    cut = "The keeper counted ships passing the rocks. A storm came in from the"
    scripted(monkeypatch, tiny_reader, [cut] * 4)
    events = list(summarize(library, tiny_reader, doc_id, 0, max_new_tokens=12))
    assert events[-1].kind == "done" and events[-1].text == "The keeper counted ships passing the rocks."
    assert stored_summaries(library, doc_id, tiny_reader.fingerprint)[0] == "The keeper counted ships passing the rocks."


# ---- extractive-first notes ----

@pytest.fixture(scope="session")
def embedder():
    from infini_reader.app.core.embeddings import default_embedder

    e = default_embedder()
    if e is None:
        pytest.skip("the embedding model could not be installed (offline)")
    return e


STORY = ("Mara rowed the small boat across the harbour at dawn to reach the lighthouse. "
         "The lighthouse keeper had not lit the lamp for three nights, and the fishing fleet was late. "
         "“Is anyone there?” she called up the dark stairway. "
         "Mara climbed the stairway and found the keeper asleep beside the broken lamp. "
         "The price of flour at the market had risen again that spring, the baker said to nobody. "
         "She mended the lamp with wire from her boat, and its light swept the harbour again. "
         "The fishing fleet saw the light and came home safely through the rocks before midnight.")


def test_key_sentences_are_chosen_by_meaning_in_order_without_speech(embedder):
    chosen = summaries.choose_sentences(STORY, 3, embedder)
    assert len(chosen) == 3
    assert all(c in STORY for c in chosen)
    assert [STORY.index(c) for c in chosen] == sorted(STORY.index(c) for c in chosen)  # the text's order
    assert not any("“" in c or "flour" in c for c in chosen)  # no speech, not the stray sentence
    # marginal relevance: a sentence said twice is chosen once
    twice = STORY + " " + chosen[0]
    again = summaries.choose_sentences(twice, 3, embedder)
    assert len(set(again)) == 3
    # without an embedding model, by the part's frequent words; a first-person narration still gives notes
    assert len(summaries.choose_sentences(STORY, 2, None)) == 2
    narrated = "I rowed the boat across the harbour to the old lighthouse at dawn. " * 2 + \
        "I climbed the dark stairway and found the keeper asleep by the lamp."
    assert summaries.choose_sentences(narrated, 3, None)


def test_an_extractive_note_retells_the_key_sentences_or_keeps_them(tiny_reader, library, tmp_path, monkeypatch,
                                                                    embedder):
    doc_id = read_book(library, tiny_reader, tmp_path, chapters=1, paragraphs=4)
    doc = library.document(doc_id)
    part = doc.text[doc.sections[0].start:doc.sections[0].end]
    key = summaries.choose_sentences(part, summaries.KEY_SENTENCES, embedder)
    assert key
    retold = "The keeper of lighthouse number 101 counted ships passing the rocks before the storm."
    prompts = scripted(monkeypatch, tiny_reader, [retold, "The Dreamwalker sailed to Paris with a dragon."])
    events = list(summarize(library, tiny_reader, doc_id, 0, style="extractive", redo=True))
    done = [ev for ev in events if ev.kind == "done"]
    assert done and done[-1].text == retold
    asked = str(prompts[0])
    assert key[0] in asked and "Retell" in asked  # the model was given the key sentences...
    assert part.count("counted") > asked.count("counted")  # ...not the whole part
    # a retelling the text does not support is not kept: the key sentences are the note
    events = list(summarize(library, tiny_reader, doc_id, 0, style="extractive", redo=True))
    assert [ev for ev in events if ev.kind == "done"][-1].text == " ".join(key)
    assert stored_summaries(library, doc_id, tiny_reader.fingerprint)[0] == " ".join(key)
