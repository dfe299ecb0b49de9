"""Answers with citations, the stored chat, summaries: real library, real readers, small models."""

import threading

import numpy as np
import pymupdf
import pytest
import torch

from infini_reader import engine
from infini_reader.app.core.answers import RetrievalSettings, ask, chat_history, find_passages
from infini_reader.app.core.ingest import ingest_file
from infini_reader.app.core.library import Library
from infini_reader.app.core.summaries import stored_summaries, summarize

WORDS = ("river stone window garden letter candle market winter harbour bridge lantern orchard meadow "
         "carriage violin kettle ladder blanket chimney compass").split()


def filler(i: int) -> str:
    w = WORDS
    return (f"The {w[i % 20]} near the {w[(i * 7) % 20]} was quiet, and the {w[(i * 3) % 20]} "
            f"waited by the {w[(i * 11) % 20]} until evening came.")


@pytest.fixture(scope="module")
def keyword_reader(builtin_tokenizer_engine):
    """A tiny model built so that its keys and queries are the token's own sparse pattern in
    every layer: σ(q)·z_j then measures how many of the question's tokens segment j holds.
    (Attention and MLP outputs are zero, so every layer sees the embeddings.)"""
    b = builtin_tokenizer_engine
    cfg = engine.InfiniConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=64, intermediate_size=64, segment_length=64, memory_update="linear")
    model = engine.build_model(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = torch.full((cfg.vocab_size, 64), -3.0)
        active = torch.rand(cfg.vocab_size, 64, generator=g).argsort(dim=1)[:, :4]
        emb.scatter_(1, active, 3.0)
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            a = layer.self_attn
            eye = torch.eye(64) * 3.0
            a.q_proj.weight.copy_(torch.cat([eye, eye]))
            a.k_proj.weight.copy_(eye)
            a.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return engine.Engine(model, b.tokenizer, "keyword", b.tokenizer_json, b.chat)


def make_pdf(path, fact_page: int, fact: str, pages: int = 12):
    doc = pymupdf.open()
    toc = []
    for p in range(pages):
        page = doc.new_page()
        y = 72
        if p % 4 == 0:
            title = f"Chapter {p // 4 + 1}: Part {p // 4 + 1}"
            page.insert_text((72, y), title, fontsize=16)
            toc.append([1, title, p + 1])
            y += 30
        sentences = [filler(p * 10 + i) for i in range(9)]
        if p == fact_page:
            sentences.insert(4, fact)
        for s in sentences:
            page.insert_textbox(pymupdf.Rect(72, y, 520, y + 60), s, fontsize=11)
            y += 60
    doc.set_toc(toc)
    doc.save(path)
    return path


def test_memory_attribution_finds_the_segment_that_holds_the_fact(keyword_reader, library, tmp_path):
    fact = "Zebedee Quokka keeps seventeen marmalade zeppelins in the lighthouse cellar."
    book = make_pdf(tmp_path / "book.pdf", fact_page=7, fact=fact)
    *_, last = ingest_file(library, keyword_reader, book)
    assert last.phase == "ready" and last.segments_total > 10
    doc = library.document(last.document_id)
    at = doc.text.index("Zebedee")
    mem_cites = find_passages(library, keyword_reader, last.document_id,
                              "How many marmalade zeppelins does Zebedee Quokka keep?", RetrievalSettings(mode="memory"))
    assert mem_cites[0].segment_idx is not None
    # the top passage lies in the segment that holds the fact
    sid = library.snapshot_id(last.document_id, keyword_reader.fingerprint)
    import sqlite3

    spans = sqlite3.connect(library.url.removeprefix("sqlite:///")).execute(
        "select idx, char_start, char_end from segments where snapshot_id = ? order by idx", (sid,)).fetchall()
    fact_seg = next(i for i, a, b in spans if a <= at < b)
    assert mem_cites[0].segment_idx == fact_seg


def test_citations_carry_the_chapter_and_page_of_the_library(tiny_reader, library, tmp_path):
    fact = "The harbourmaster Octavia Plimsoll painted the lighthouse crimson in the spring."
    book = make_pdf(tmp_path / "harbour.pdf", fact_page=6, fact=fact)
    *_, last = ingest_file(library, tiny_reader, book)
    doc_id = last.document_id
    events = list(ask(library, tiny_reader, doc_id, "What colour did Octavia Plimsoll paint the lighthouse?",
                      max_new_tokens=12, settings=RetrievalSettings(mode="bm25")))
    kinds = [e.kind for e in events]
    assert kinds[0] == "citations" and kinds[-1] == "done" and "token" in kinds
    top = events[0].citations[0]
    assert "Octavia Plimsoll" in top.passage
    doc = library.document(doc_id)
    assert top.page == 7 == doc.page_at(top.char_start)  # pages are 1-based: page index 6
    assert top.section_idx == 1 and top.chapter == doc.sections[1].title and "Part 2" in top.chapter
    assert events[-1].text == "".join(e.text for e in events if e.kind == "token").strip()
    # a follow-up sees the first turn; both are stored with their citations, and survive a restart
    list(ask(library, tiny_reader, doc_id, "And in which season?", max_new_tokens=5,
             settings=RetrievalSettings(mode="bm25")))
    again = Library(library.url)
    hist = chat_history(again, doc_id)
    assert [m.role for m in hist] == ["user", "assistant", "user", "assistant"]
    assert hist[0].content.startswith("What colour") and hist[1].citations[0].page == 7
    assert hist[1].citations[0].passage == top.passage


def test_a_title_or_heading_alone_is_not_cited_while_longer_passages_match(tiny_reader, library, tmp_path):
    """The book's name before chapter 1 ("The Lighthouse Keeper") matched a question about the
    keeper's cat, was re-read beside it, and became the answer ("Lighthouse Keeper.")."""
    book = tmp_path / "keeper.txt"
    book.write_text("""The Lighthouse Keeper

Chapter 1

Martha Penrose kept the lighthouse on Gull Rock for thirty years. Every evening she climbed the
one hundred and twelve steps to light the great lamp. Her cat, a grey tabby named Pilot, followed
her up the stairs each night.

Chapter 2

One winter a ship called the Northern Star ran aground on the reef. Martha rowed out in her small
boat and saved eleven sailors. The town gave her a silver medal, which she kept in a tin box under
her bed.
""", encoding="utf-8")
    *_, last = ingest_file(library, tiny_reader, book)
    passages = library.passages(last.document_id)
    text = library.document(last.document_id).text
    assert any(len(text[p.char_start:p.char_end].split()) < 5 for p in passages)  # the title is a passage
    cites = find_passages(library, tiny_reader, last.document_id, "What was the lighthouse keeper's cat called?",
                          RetrievalSettings(mode="bm25"))
    assert cites and all(len(c.passage.split()) >= 5 for c in cites)
    assert "Pilot" in cites[0].passage
    # a book that is nothing but a title is still cited
    only = tmp_path / "only.txt"
    only.write_text("The Lighthouse Keeper\n", encoding="utf-8")
    *_, last = ingest_file(library, tiny_reader, only)
    assert find_passages(library, tiny_reader, last.document_id, "Who kept the lighthouse?",
                         RetrievalSettings(mode="bm25"))


def test_asking_with_another_models_memory_is_refused(tiny_reader, library, tmp_path):
    book = make_pdf(tmp_path / "b.pdf", fact_page=1, fact="A fact.")
    *_, last = ingest_file(library, tiny_reader, book)
    other = engine.Engine(engine.build_model(tiny_reader.config, seed=5), tiny_reader.tokenizer, "other",
                          tiny_reader.tokenizer_json, tiny_reader.chat)
    (ev,) = list(ask(library, other, last.document_id, "Anything?"))
    assert ev.kind == "error" and "different model" in ev.text and "read it again" in ev.text


def test_summaries_stream_are_stored_and_come_back_at_once(tiny_reader, library, tmp_path):
    book = make_pdf(tmp_path / "s.pdf", fact_page=1, fact="A fact.", pages=8)
    *_, last = ingest_file(library, tiny_reader, book)
    doc_id = last.document_id
    events = list(summarize(library, tiny_reader, doc_id, 0, max_new_tokens=12))
    assert "token" in [e.kind for e in events] and events[-1].kind == "done" and events[-1].section_idx == 0
    whole = list(summarize(library, tiny_reader, doc_id, None, max_new_tokens=12))
    assert whole[-1].kind == "done" and whole[-1].section_idx is None
    stored = stored_summaries(Library(library.url), doc_id, tiny_reader.fingerprint)
    assert set(stored) == {0, 1, None} and stored[0] == events[-1].text

    class NoModel:  # a stored summary must not touch the model
        fingerprint = tiny_reader.fingerprint

        def generate(self, *a, **k):
            raise AssertionError("the model was called")

    assert [e.kind for e in summarize(library, NoModel(), doc_id, 0)] == ["done"]
    cancel = threading.Event()
    cancel.set()
    assert [e.kind for e in summarize(library, tiny_reader, doc_id, 1, redo=True, cancel=cancel)
            if e.kind == "done"] == []


def test_a_chapter_is_summarised_over_the_memory_of_the_chapters_before(tiny_reader, library, tmp_path):
    from infini_reader.app.core.summaries import MemoryBefore
    from infini_reader.app.core.segments import plan_segments

    book = make_pdf(tmp_path / "m.pdf", fact_page=1, fact="A fact.", pages=8)
    *_, last = ingest_file(library, tiny_reader, book)
    doc_id = last.document_id
    doc = library.document(doc_id)
    start = doc.sections[1].start
    plans = plan_segments(doc, tiny_reader.tokenizer, tiny_reader.config.segment_length)
    before = [p for p in plans if p.char_end <= start]
    assert 0 < len(before) < len(plans)
    # the memory of a reading that stopped at the last segment before the chapter
    want = tiny_reader.ingest(np.concatenate([p.token_ids for p in before]).astype(np.int64), tiny_reader.new_memory())
    mb = MemoryBefore(library, tiny_reader, doc_id)
    got = mb.at(start)
    assert got.to_bytes() == want.to_bytes() and mb.segments_read == len(before)
    assert mb.at(start).to_bytes() == want.to_bytes() and mb.segments_read == len(before)  # not read twice
    assert mb.at(0).empty  # nothing before the start

    seen = []
    real = tiny_reader.generate

    def spy(messages, memory=None, **kw):
        seen.append(memory.to_bytes())
        return real(messages, memory, **kw)

    tiny_reader.generate = spy
    try:
        events = list(summarize(library, tiny_reader, doc_id, 1, max_new_tokens=4))
    finally:
        del tiny_reader.generate
    assert events[-1].kind == "done" and seen and all(m == want.to_bytes() for m in seen)
    assert "recalling the chapters before" in [e.text for e in events if e.kind == "status"]


def test_an_answer_ends_where_the_model_starts_the_next_question(tiny_reader, library, tmp_path, monkeypatch):
    from infini_reader.engine.generate import detokenize

    book = make_pdf(tmp_path / "q.pdf", fact_page=1, fact="The drink tasted of cherry-tart.")
    *_, last = ingest_file(library, tiny_reader, book)
    tok = tiny_reader.tokenizer
    written = "It tasted of cherry-tart.\n\nQuestion: What is the name of the book?"

    def generate(messages, memory=None, stop=None, **kw):  # what the model writes, through the engine's own cut
        ids = iter(tok.encode(written, add_special_tokens=False).ids)
        return detokenize(ids, lambda t: tok.decode(t, skip_special_tokens=True), list(stop or []))

    monkeypatch.setattr(tiny_reader, "generate", generate)
    events = list(ask(library, tiny_reader, last.document_id, "What did the drink taste of?",
                      settings=RetrievalSettings(mode="bm25", span_answers=False)))
    assert events[-1].kind == "done" and events[-1].text == "It tasted of cherry-tart."
    assert "Question" not in "".join(e.text for e in events if e.kind == "token")
    assert chat_history(library, last.document_id)[-1].content == "It tasted of cherry-tart."


# ---- answers read out of the passage ----

from infini_reader.app.core import answers as A  # noqa: E402


def test_sentences_keep_titles_with_their_names():
    text = "Mr. Utterson walked on. Dr. Jekyll's door had 4712 nails! Was it so?\n\nNew paragraph here"
    got = [text[a:b] for a, b in A.sentences(text, 0, len(text))]
    assert got == ["Mr. Utterson walked on.", "Dr. Jekyll's door had 4712 nails!", "Was it so?", "New paragraph here"]


def test_span_candidates_leave_out_the_questions_words_and_count_with_numbers():
    text = "The password to Professor Quillon's vault is marigold."
    spans = A.span_candidates(text, "What is the password to Professor Quillon's vault?")
    assert "marigold" in spans and "Professor Quillon's" not in spans and "vault" not in spans
    counted = A.span_candidates("Dr. Jekyll's door had exactly 4712 brass nails and twenty hinges.",
                                "How many brass nails did the door have?")
    assert "4712" in counted and "twenty" in counted and all(
        any(ch.isdigit() for ch in s) or "twenty" in s for s in counted)
    assert A.is_span_question("Who killed Sir Danvers?") and A.is_span_question("How many nails were there?")
    assert not A.is_span_question("Why did Jekyll write the letter?")
    assert not A.is_span_question("What happens in the first chapter?")
    assert not A.is_span_question("What kind of person was the old man?")  # a description (FairytaleQA)
    assert not A.is_span_question("What did his brothers do to him?") and A.is_span_question("In which town was he born?")
    # a quote before a little word leaves it a little word: "‘The" is no answer (needle, 32K: "The.")
    quoted = A.span_candidates("He cried, ‘The spice is cardamom,’ and ’twas the end.", "Which spice?")
    assert "cardamom" in quoted and not any(s.lower() in ("the", "‘the", "the spice") for s in quoted)
    assert not any(s.split()[0].lower().strip("‘’'") in ("the", "and") for s in quoted)


def test_the_best_sentence_is_the_one_with_the_questions_rare_words():
    text = ("The door was old and the street was quiet. The lighthouse keeper Bartholomew Crane owns a parrot "
            "named Jupiter. The door opened on the street.")
    cite = A.Citation(0, None, None, None, None, 0, len(text), 1.0, text)
    ranked = A.best_sentences(text, "What is the name of Bartholomew Crane's parrot?", [cite])
    assert text[ranked[0].start:ranked[0].end].startswith("The lighthouse keeper")
    (win,) = A.reread_windows(text, ranked, [cite], around=0)
    assert text[win[0]:win[1]] == text[ranked[0].start:ranked[0].end]
    prompt = A.build_prompt(text, "What is the parrot called?", [win])
    assert prompt == [{"role": "user", "content": text[win[0]:win[1]] + "\n\nWhat is the parrot called?"}]


def test_the_real_model_picks_the_answer_span_out_of_the_sentence(builtin_tokenizer_engine):
    e = builtin_tokenizer_engine
    for text, q, want in [
        ("The lighthouse keeper Bartholomew Crane owns a parrot named Jupiter. It was a cold morning.",
         "What is the name of Bartholomew Crane's parrot?", "Jupiter"),
        ("Mr. Utterson walked on. Dr. Jekyll's laboratory door had exactly 4712 brass nails in its oak.",
         "How many brass nails did Dr. Jekyll's laboratory door have?", "4712"),
    ]:
        spans = A.span_candidates(text, q)
        scores = A.score_spans(e, A.build_prompt(text, q, [(0, len(text))]), spans, batch=8)
        assert want in spans[int(np.argmax(scores))]


def test_span_scores_match_the_models_own_log_probabilities(tiny_reader):
    e = tiny_reader
    msgs = [{"role": "user", "content": "Some words about a harbour.\n\nWhat is it?"}]
    spans = ["a harbour", "words", "Some words about"]
    got = A.score_spans(e, msgs, spans, batch=2)
    prompt = e.prompt_ids(msgs)
    end = e.chat.stop_token_ids[0]
    dot = e.tokenizer.encode(".", add_special_tokens=False).ids[0]
    for s, g in zip(spans, got):
        ids = e.tokenizer.encode(s, add_special_tokens=False).ids
        logp = torch.log_softmax(e.logits(torch.cat([prompt, torch.tensor(ids)])), -1)
        n = prompt.numel()
        want = sum(float(logp[n - 1 + t, i]) for t, i in enumerate(ids))
        want += float(torch.logsumexp(logp[n - 1 + len(ids), [end, dot]], 0))
        assert g == pytest.approx(want, abs=1e-3)


def test_a_span_answer_is_copied_from_the_cited_sentence_and_unsupported_questions_say_so(
        tiny_reader, library, tmp_path):
    fact = "The harbourmaster Octavia Plimsoll painted the lighthouse crimson in the spring."
    book = make_pdf(tmp_path / "harbour.pdf", fact_page=5, fact=fact)
    *_, last = ingest_file(library, tiny_reader, book)
    events = list(ask(library, tiny_reader, last.document_id, "What colour did Octavia Plimsoll paint the lighthouse?",
                      settings=RetrievalSettings(mode="bm25")))
    done = events[-1]
    assert done.kind == "done" and done.memory_complete is True
    # the tiny random model may pick any span of the re-read sentences: it is copied from one of them,
    # and that citation shows it
    span = done.text.rstrip(".")
    cited = [c for c in done.citations if c.sentence and span[0].lower() + span[1:] in c.sentence[0].lower() + c.sentence[1:]]
    assert cited
    assert events[0].citations[0].sentence == fact  # the best-matching sentence, shown at once
    doc = library.document(last.document_id)
    assert all(doc.text[c.sentence_start:c.sentence_end].strip() == c.sentence for c in done.citations)
    stored = chat_history(Library(library.url), last.document_id)[-1].citations
    assert [c.sentence for c in stored] == [c.sentence for c in done.citations]  # kept in the chat
    nothing = list(ask(library, tiny_reader, last.document_id, "Who is Zanzibar Quetzalcoatl?",
                       settings=RetrievalSettings(mode="bm25")))
    assert nothing[-1].kind == "done" and nothing[-1].text == A.NOT_FOUND


def test_a_book_is_askable_while_its_memory_pass_is_under_way(tiny_reader, library, tmp_path):
    fact = "The harbourmaster Octavia Plimsoll painted the lighthouse crimson in the spring."
    book = make_pdf(tmp_path / "early.pdf", fact_page=9, fact=fact)
    cancel = threading.Event()
    for ev in ingest_file(library, tiny_reader, book, cancel=cancel, checkpoint_segments=1):
        if ev.phase == "reading" and ev.segments_done >= 2:
            cancel.set()  # stopped early: the passages are indexed, the memory is partial
    assert ev.phase == "cancelled" and ev.segments_done < ev.segments_total
    events = list(ask(library, tiny_reader, ev.document_id, "What colour did Octavia Plimsoll paint the lighthouse?",
                      max_new_tokens=8))
    assert events[0].kind == "citations" and events[0].memory_complete is False
    assert any("Octavia Plimsoll" in c.passage for c in events[0].citations)
    assert events[-1].kind == "done" and events[-1].memory_complete is False


def test_choices_offered_in_a_question_are_found():
    stem, opts = A.parse_choices("Who owns the parrot? (A) the keeper (B) the clockmaker (C) nobody")
    assert stem == "Who owns the parrot?" and opts == [("A", "the keeper"), ("B", "the clockmaker"), ("C", "nobody")]
    stem, opts = A.parse_choices("What is the parrot called?\nA. Biscuit\nB. Polly\nC. Jupiter")
    assert stem == "What is the parrot called?" and [o for _, o in opts] == ["Biscuit", "Polly", "Jupiter"]
    assert A.parse_choices("What did (B) say to A?") is None  # letters out of order are not choices
    assert A.parse_choices("Where is the parrot?") is None


def test_a_free_answer_is_snapped_to_the_span_it_names():
    spans = A.span_candidates("The secret ingredient of Captain Pollard's stew is cardamom.",
                              "What is the secret ingredient of Captain Pollard's stew?", max_words=6)
    assert "cardamom" in spans and not any("Captain" in s for s in spans)
    assert A.snap_to_span("The secret ingredient of Captain Pollard's stew is cardamom.", spans) == "cardamom"
    spans = A.span_candidates("Miss Ottoline Vance keeps her emerald necklace inside a hollow violin.",
                              "Where does Miss Ottoline Vance keep her emerald necklace?", max_words=6)
    assert A.snap_to_span("In the hollow violin.", spans) == "hollow violin"
    assert A.snap_to_span("In a small box on the wall.", spans) is None  # made up: the span scorer decides
    sentence = "It was the farthest corner of the garden, and in it was standing a little boy."
    spans = A.span_candidates(sentence, "Who was standing in the farthest corner of the garden?", max_words=6)
    assert A.widen_span(A.snap_to_span("The boy.", spans), spans) == "little boy"
    # a name stays as it is, and nothing after it is taken in
    spans = A.span_candidates("One winter a ship called the Northern Star ran aground on the reef.",
                              "What was the ship called?", max_words=6)
    assert A.widen_span(A.snap_to_span("The Northern Star.", spans), spans) == "Northern Star"
    # the question's own word in another form is not an answer ("name" / "named")
    spans = A.span_candidates("Her cat, a grey tabby named Pilot, followed her up the stairs.",
                              "What was the name of the cat?", max_words=6)
    assert "named" not in spans and A.snap_to_span("The cat was named Polly.", spans) is None


def _unread_book(tmp_path, library, paragraphs):
    """A plain-text book in the library, split and indexed but not read: askable at once."""
    from infini_reader.app.core.ingest import _read
    from infini_reader.app.core.library import file_hash

    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return library.add_document(_read(path), file_hash(path), path.stat().st_size)


def test_multiple_choice_is_answered_by_scoring_each_option_against_the_cited_text(builtin_tokenizer_engine,
                                                                                    library, tmp_path):
    e = builtin_tokenizer_engine
    doc_id = _unread_book(tmp_path, library, [
        filler(1) + " " + filler(2),
        "The lighthouse keeper Bartholomew Crane owns a parrot named Jupiter. " + filler(3),
        filler(4) + " " + filler(5),
        "The old clockmaker Anselm Ferro was born in the town of Zellmoor. " + filler(6),
    ])
    st = RetrievalSettings(mode="bm25")
    # the right option is neither the first nor the model's favourite letter (B, issue 37)
    q = "In which town was the clockmaker Anselm Ferro born?\nA. London\nB. Dunmore\nC. Zellmoor\nD. Paris"
    done = list(ask(library, e, doc_id, q, settings=st))[-1]
    assert done.kind == "done" and done.text == "(C) Zellmoor"
    assert "Zellmoor" in done.citations[0].sentence  # the option's sentence is shown


def test_the_model_finds_the_sentence_a_question_in_other_words_is_about(builtin_tokenizer_engine):
    fact = "The secret ingredient of Captain Pollard's stew is cardamom."
    others = [filler(i) for i in range(5)] + ["The road ran along the river to the market in the morning."]
    scores = A.question_likelihood(builtin_tokenizer_engine, "Which spice did the sea captain hide in his soup dish?",
                                   others + [fact])
    assert int(np.argmax(scores)) == len(others)


# ---- questions in other words; brief free answers ----


def _indexed_book(tmp_path, library, paragraphs):
    """A plain-text book split, full-text indexed and embedded (MiniLM), as when it is dropped."""
    from infini_reader.app.core import embeddings
    from infini_reader.app.core.ingest import index_passages

    doc_id = _unread_book(tmp_path, library, paragraphs)
    list(index_passages(library, doc_id, "book", embeddings.default_embedder()))
    return doc_id


def test_a_question_in_other_words_is_not_drowned_by_bm25s_common_words(library, tmp_path):
    # many passages share the paraphrase's common words ("like", "best"); the fact's passage shares
    # none of its words but its meaning (physician ~ doctor, hue ~ colour)
    paras = [" ".join(filler(5 * i + k) for k in range(4)) + f" The {WORDS[i % 20]} was what they liked best."
             for i in range(24)]
    fact = "Doctor Ignatius Thorne's favourite colour is turquoise."
    paras.insert(13, " ".join(filler(200 + k) for k in range(2)) + " " + fact + " " + filler(300))
    doc_id = _indexed_book(tmp_path, library, paras)
    q = "Which hue does the physician like best?"

    def top3(**kw):
        st = RetrievalSettings(mode="hybrid", memory_weight=0, lm_weight=0, **kw)
        return [c.passage for c in find_passages(library, None, doc_id, q, st)]

    assert any(fact in p for p in top3())  # the defaults find it
    assert not any(fact in p for p in top3(rrf_k=60, bm25_full=0))  # the fusion before: BM25's ranks drowned it
    # a question in the fact's own words keeps BM25 at full weight and its passage first
    direct = find_passages(library, None, doc_id, "What is Doctor Ignatius Thorne's favourite colour?",
                           RetrievalSettings(mode="hybrid", memory_weight=0, lm_weight=0))
    assert fact in direct[0].passage


def test_word_coverage_is_high_for_the_facts_own_words_and_low_for_other_words():
    book = " ".join(filler(i) for i in range(40)) + " Doctor Ignatius Thorne's favourite colour is turquoise."
    fact_passage = "Doctor Ignatius Thorne's favourite colour is turquoise."
    assert A.word_coverage(book, "What is Doctor Ignatius Thorne's favourite colour?", fact_passage) > 0.9
    assert A.word_coverage(book, "Which hue does the physician like the river best?", filler(3)) < 0.3


def test_a_free_answer_ends_with_its_first_sentence_or_its_word_limit(tiny_reader, library, tmp_path, monkeypatch):
    from infini_reader.engine.generate import detokenize

    book = make_pdf(tmp_path / "q.pdf", fact_page=1, fact="The children ran away because the Giant shouted.")
    *_, last = ingest_file(library, tiny_reader, book)
    tok = tiny_reader.tokenizer
    written = {"text": ""}

    def generate(messages, memory=None, stop=None, **kw):
        ids = iter(tok.encode(written["text"], add_special_tokens=False).ids)
        return detokenize(ids, lambda t: tok.decode(t, skip_special_tokens=True), list(stop or []))

    monkeypatch.setattr(tiny_reader, "generate", generate)

    def answer(question, words):
        written["text"] = words
        events = list(ask(library, tiny_reader, last.document_id, question,
                          settings=RetrievalSettings(mode="bm25", span_answers=False)))
        assert events[-1].kind == "done"
        assert "".join(e.text for e in events if e.kind == "token").strip() == events[-1].text  # as shown
        return events[-1].text

    q = "Why did the children run away?"
    assert answer(q, "Mr. Giant shouted at them. They were scared and ran home to their mothers.") == \
        "Mr. Giant shouted at them."
    long = answer(q, "The children ran away because the Giant shouted at them in a loud voice from the garden wall")
    assert long == "The children ran away because the Giant shouted at them in a"  # 12 words
    assert chat_history(library, last.document_id)[-1].content == long
    # a request for a summary is answered at length
    assert answer("Summarize what the Giant did.", "He shouted. He built a wall. He let them in.") == \
        "He shouted. He built a wall. He let them in."
    assert answer(q, "He shouted. Then x") == "He shouted."
    assert RetrievalSettings().free_words == 12


def test_a_span_answer_is_snapped_from_the_models_first_sentence_only(tiny_reader, library, tmp_path, monkeypatch):
    from infini_reader.engine.generate import detokenize

    fact = "The old clockmaker Anselm Ferro was born in the town of Zellmoor. Here, in the brain, is all."
    book = make_pdf(tmp_path / "z.pdf", fact_page=1, fact=fact)
    *_, last = ingest_file(library, tiny_reader, book)
    tok = tiny_reader.tokenizer
    # the model answers, then runs on with words of the next sentence (needle, 32K: "Brain.")
    written = "He was born in the town of Zellmoor. Here, in the brain, is all the process"

    def generate(messages, memory=None, stop=None, **kw):
        ids = iter(tok.encode(written, add_special_tokens=False).ids)
        return detokenize(ids, lambda t: tok.decode(t, skip_special_tokens=True), list(stop or []))

    monkeypatch.setattr(tiny_reader, "generate", generate)
    done = list(ask(library, tiny_reader, last.document_id, "In which town was the clockmaker Anselm Ferro born?",
                    settings=RetrievalSettings(mode="bm25")))[-1]
    assert done.kind == "done" and done.text == "Zellmoor."
