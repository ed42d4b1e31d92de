"""Chunking keeps sentences whole within the size, repeats trailing sentences as overlap; text sources."""

from fhir_server.embeddings.chunking import chunks, sentences
from fhir_server.embeddings.hashed import vector
from fhir_server.embeddings.sources import has_text, narrative_text, prose

TEXT = ("The patient reports knee pain. It started after a fall! MRI was requested? The result shows a tear.\n\n"
        "Plan: physiotherapy for six weeks")


def test_sentences_end_at_punctuation_and_paragraphs() -> None:
    assert sentences(TEXT) == ["The patient reports knee pain.", "It started after a fall!", "MRI was requested?",
                               "The result shows a tear.", "Plan:", "physiotherapy for six weeks"]


def test_chunks_hold_whole_sentences_within_the_size_with_overlap() -> None:
    out = chunks(TEXT, 60, 30)
    assert all(len(chunk) <= 60 for chunk in out)
    assert out[0] == "The patient reports knee pain. It started after a fall!"
    # The next chunk starts with the trailing sentence that fits the overlap.
    assert out[1].startswith("It started after a fall! MRI was requested?")
    assert "physiotherapy for six weeks" in out[-1]
    assert chunks(TEXT, 1000, 100) == [" ".join(sentences(TEXT))]
    assert chunks("", 100, 10) == []


def test_a_sentence_longer_than_the_size_is_cut_between_words() -> None:
    long = " ".join(["word"] * 50) + "."
    out = chunks(long, 40, 0)
    assert all(len(chunk) <= 40 for chunk in out) and " ".join(out) == long


def test_sources() -> None:
    assert narrative_text('<div xmlns="http://www.w3.org/1999/xhtml"><p>A &amp; B</p><ul><li>one</li>'
                          "<li>two</li></ul></div>").split() == ["A", "&", "B", "one", "two"]
    answers = {"resourceType": "QuestionnaireResponse", "item": [{"linkId": "g", "item": [
        {"linkId": "1", "text": "Pain score", "answer": [{"valueQuantity": {"value": 7, "unit": "/10"}}]},
        {"linkId": "2", "text": "Where?", "answer": [{"valueCoding": {"code": "K", "display": "Knee"}}]}]}]}
    assert prose(answers) == (["Pain score: 7 /10", "Where?: Knee"], [])
    assert has_text(answers) and not has_text({"resourceType": "Patient", "name": [{"family": "X"}]})
    assert has_text({"resourceType": "Patient", "text": {"status": "generated", "div": "<div>x</div>"}})


def test_hashed_vectors_are_deterministic_unit_vectors_near_for_related_words() -> None:
    knee = vector("MRI of the knee", 384)
    assert (knee == vector("MRI of the knee", 384)).all()
    assert abs(float((knee * knee).sum()) - 1) < 1e-5
    assert float((knee * vector("knees MRI scan", 384)).sum()) > float((knee * vector("blood pressure", 384)).sum())
