"""Span answers read out of the re-read sentences: what kind of span a question asks for, the
question's subject restated in the book's words, and the real model end to end (issue 37)."""

import pytest

from infini_reader.app.core import answers as A
from infini_reader.app.core import embeddings


@pytest.fixture(scope="module")
def embed():
    e = embeddings.default_embedder()
    if e is None:
        pytest.skip("the embedding model cannot be installed here")
    return e


def test_the_wh_phrase_says_what_kind_of_span_answers():
    cases = {
        "Who rebuilt the mill by the weir?": ("person", ""),
        "Where did the old sailor bury his compass?": ("place", ""),
        "Under which bush did the hare sleep?": ("place", "bush"),
        "When does the ferry leave the harbour?": ("time", ""),
        "In which month is the sheep fair held?": ("time", "month"),
        "How many bells are in the tower?": ("number", "bells"),
        "At what age did the weaver marry?": ("number", "age"),
        "Which herb does the innkeeper grow?": ("thing", "herb"),
        "Which servant opened the gate for the stranger?": ("person", "servant"),  # "opened" is a verb
        "What is the favourite song of the miller's wife?": ("thing", "favourite song"),
        "What is the miller's dog called?": ("thing", "name"),
        "What is the village of Upcott famous for?": ("thing", ""),  # not a village: ends on "for"
    }
    for question, (kind, noun) in cases.items():
        got = A.answer_type(question)
        assert (got.kind, got.noun) == (kind, noun), question
    assert A.answer_type("Which herb does the innkeeper grow?").rest == "does the innkeeper grow"


def test_spans_of_the_wrong_kind_do_not_answer():
    who, when = A.answer_type("Who rebuilt the mill?"), A.answer_type("When did the ferry leave?")
    assert A.fits_kind("Tobias Quill", who) and not A.fits_kind("rebuilt", who)
    assert A.fits_kind("in 1791", when) and A.fits_kind("at midnight", when) and not A.fits_kind("harbour", when)
    assert A.fits_kind("ninety-two years", A.answer_type("At what age did the weaver marry?"))
    # hyphenated number words count: "How old …" kept no span of "ninety-two years old" before
    spans = A.span_candidates("The weaver was ninety-two years old when he married.", "How old was the weaver?")
    assert "ninety-two years old" in spans or "ninety-two" in spans


def test_the_questions_subject_in_other_words_is_not_taken_for_the_answer(embed):
    sentence = "The village of Thornbury is famous for its lavender."
    question = "For which herb is that hamlet known?"
    spans = A.span_candidates(sentence, question, max_words=6)
    subject = A.restated_subject(embed, A.answer_type(question), spans, question)
    assert "village of Thornbury" in subject and "lavender" not in subject
    sentence = "The merchant Ansel Brook keeps his ledgers in a locked sea chest."
    question = "Where does the trader store his account books?"
    spans = A.span_candidates(sentence, question, max_words=6)
    subject = A.restated_subject(embed, A.answer_type(question), spans, question)
    assert "locked sea chest" not in subject and "sea chest" not in subject
