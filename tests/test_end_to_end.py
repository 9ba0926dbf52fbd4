"""The whole pipeline on the real model and real Milvus: ingest samples, then search.

Each test runs against Milvus Lite and against a Milvus server started for the
session (marker ``server``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semsearch import SemanticSearch
from semsearch.errors import CollectionNotFoundError, ModelMismatchError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_EXCLUDES = ("README.md", "LICENSES/*")

# Hand-written questions about the sample documents, with the documents that
# answer them. A question passes when one of them is among the top 3 documents.
QUESTIONS = [
    ("How does SQLite roll back a transaction after a power failure?", {"html/sqlite-atomiccommit.html"}),
    ("How does write-ahead logging work and when does a checkpoint happen?", {"html/sqlite-wal.html"}),
    ("Declaring a foreign key with ON DELETE CASCADE", {"html/sqlite-foreignkeys.html"}),
    ("full-text search tables and MATCH queries", {"html/sqlite-fts5.html"}),
    ("spatial index of bounding boxes for range queries", {"html/sqlite-rtree.html"}),
    ("SQL functions that extract values from JSON text", {"html/sqlite-json1.html"}),
    ("What happens to a String when ownership moves to another variable?", {"md/rust-book-ch04-01-what-is-ownership.md"}),
    ("rules for mutable references and borrowing", {"md/rust-book-ch04-02-references-and-borrowing.md"}),
    ("storing keys with associated values in a hash map", {"md/rust-book-ch08-03-hash-maps.md"}),
    ("sending data between threads through channels", {"md/rust-book-ch16-02-message-passing.md"}),
    ("propagating errors with the question mark operator", {"md/rust-book-ch09-02-recoverable-errors-with-result.md"}),
    ("sharing state between threads with a mutex", {"md/rust-book-ch16-03-shared-state.md"}),
    ("ways a database file can get corrupted", {"html/sqlite-howtocorrupt.html"}),
]


def _doc_sources(hits) -> list[str]:
    seen: list[str] = []
    for hit in hits:
        if hit.source not in seen:
            seen.append(hit.source)
    return seen


@pytest.fixture(
    scope="module",
    params=["lite", pytest.param("server", marks=pytest.mark.server)],
)
def samples_db(request, tmp_path_factory, encoder):
    """Connection settings of a collection holding the ingested samples."""
    if request.param == "lite":
        settings = {
            "uri": str(tmp_path_factory.mktemp("lite") / "samples.db"),
            "collection": "samples",
        }
    else:
        settings = {
            "uri": request.getfixturevalue("milvus_server_uri"),
            "collection": "samples_e2e",
        }
    with SemanticSearch(**settings, encoder=encoder) as engine:
        engine.store.drop()
        report = engine.ingest([SAMPLES], exclude=SAMPLE_EXCLUDES)
    settings["report"] = report
    return settings


@pytest.fixture()
def engine(samples_db, encoder):
    with SemanticSearch(
        uri=samples_db["uri"], collection=samples_db["collection"], encoder=encoder
    ) as engine:
        yield engine


def test_ingest_samples_report(samples_db):
    report = samples_db["report"]
    assert report.documents == 69
    assert report.new == 69
    assert report.skipped == []
    assert report.chunks > 69


@pytest.mark.parametrize(("question", "expected"), QUESTIONS, ids=[q for q, _ in QUESTIONS])
def test_search_question_top3(engine, question, expected):
    hits = engine.search(question, k=20)
    top3 = _doc_sources(hits)[:3]
    assert expected & set(top3), f"{question!r}: top documents {top3}"


def test_search_scores_descending(engine):
    hits = engine.search("memory safety without a garbage collector", k=10)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0001 for s in scores)


def test_search_where_year(engine):
    hits = engine.search("the space program and the moon", k=10, where={"year": "1961"})
    assert hits
    assert {hit.source for hit in hits} == {"txt/sotu-1961-Kennedy.txt"}
    assert all(hit.metadata["year"] == 1961 for hit in hits)


def test_search_filter_category_like(engine):
    hits = engine.search(
        "transactions and locking", k=15, filter='metadata["category"] like "software%"'
    )
    assert len(hits) == 15
    assert all(hit.metadata["category"].startswith("software") for hit in hits)


def test_search_min_score(engine):
    hits = engine.search("write-ahead log checkpoint", k=20, min_score=0.4)
    assert all(hit.score >= 0.4 for hit in hits)


def test_hit_span_matches_source_text(engine):
    hit = engine.search("ownership rules in Rust", k=1)[0]
    from semsearch.loaders import iter_documents

    document = next(
        doc for doc in iter_documents([SAMPLES], include=[hit.source]) if doc.id == hit.doc_id
    )
    assert document.text[hit.start : hit.end] == hit.text


def test_reingest_unchanged(samples_db, encoder):
    with SemanticSearch(
        uri=samples_db["uri"], collection=samples_db["collection"], encoder=encoder
    ) as engine:
        rows_before = engine.stats()["rows"]
        report = engine.ingest([SAMPLES], exclude=SAMPLE_EXCLUDES)
        rows_after = engine.stats()["rows"]
    assert report.unchanged == 69
    assert report.chunks == 0
    assert rows_after == rows_before


def test_stats_counts(engine, samples_db):
    info = engine.stats()
    assert info["documents"] == 69
    assert info["rows"] == samples_db["report"].chunks
    assert info["model"]["dim"] == 384


def test_sources_chunk_counts(engine, samples_db):
    documents = engine.sources()
    assert len(documents) == 69
    assert sum(doc.stored_chunks for doc in documents) == samples_db["report"].chunks


# -- small corpora, one fresh collection per test ------------------------------


def _write_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "cats.txt").write_text(
        "Cats are small domesticated carnivores. They purr when content.\n\n"
        "A cat sleeps for most of the day and hunts at dusk.",
        encoding="utf-8",
    )
    (corpus / "rockets.md").write_text(
        "# Rockets\n\nA rocket engine burns propellant to produce thrust.\n\n"
        "## Staging\n\nMultistage rockets drop empty tanks to save mass.",
        encoding="utf-8",
    )
    return corpus


def test_changed_file_replaces_chunks(backend, encoder, tmp_path):
    corpus = _write_corpus(tmp_path)
    long_text = "\n\n".join(f"Paragraph {i} about feline behaviour and naps." * 12 for i in range(30))
    (corpus / "cats.txt").write_text(long_text, encoding="utf-8")
    with SemanticSearch(**backend, encoder=encoder, chunk_size=64) as engine:
        engine.ingest([corpus])
        before = {doc.source: doc.stored_chunks for doc in engine.sources()}
        (corpus / "cats.txt").write_text("Cats purr.", encoding="utf-8")
        report = engine.ingest([corpus])
        after = {doc.source: doc.stored_chunks for doc in engine.sources()}
        hits = engine.search("feline behaviour and naps", k=50, where={"source": "cats.txt"})
    assert before["cats.txt"] > 1
    assert report.changed == 1
    assert report.unchanged == 1
    assert after["cats.txt"] == 1
    assert [hit.text for hit in hits] == ["Cats purr."]


def test_delete_source(backend, encoder, tmp_path):
    corpus = _write_corpus(tmp_path)
    with SemanticSearch(**backend, encoder=encoder) as engine:
        engine.ingest([corpus])
        deleted = engine.delete_source("cats.txt")
        remaining = [doc.source for doc in engine.sources()]
    assert deleted >= 1
    assert remaining == ["rockets.md"]


def test_markdown_headings_in_metadata(backend, encoder, tmp_path):
    corpus = _write_corpus(tmp_path)
    with SemanticSearch(**backend, encoder=encoder, chunk_size=24, chunk_overlap=0) as engine:
        engine.ingest([corpus])
        hits = engine.search("dropping empty tanks to save mass", k=1, where={"source": "rockets.md"})
    assert hits[0].metadata["headings"] == ["Rockets", "Staging"]


def test_model_mismatch_error(backend, encoder, tmp_path):
    corpus = _write_corpus(tmp_path)
    with SemanticSearch(**backend, encoder=encoder) as engine:
        engine.ingest([corpus])
        rows = engine.stats()["rows"]
    other = dict(encoder.fingerprint, model="intfloat/e5-small-v2", weights_sha256="0" * 64)
    with SemanticSearch(**backend, encoder=encoder) as engine:
        with pytest.raises(ModelMismatchError, match="e5-small-v2") as raised:
            engine.store.ensure_collection(other)
        assert "all-MiniLM-L6-v2" in str(raised.value)
        assert engine.stats()["rows"] == rows


def test_search_missing_collection(backend, encoder):
    with SemanticSearch(**backend, encoder=encoder) as engine:
        with pytest.raises(CollectionNotFoundError, match=backend["collection"]):
            engine.search("anything")


NASTY_VALUES = [
    'quote " inside',
    "back\\slash C:\\Users\\x",
    "new\nline",
    'x" or source != "',
    "tab\tand 'single'",
]


def test_where_values_match_literally(backend, encoder, tmp_path):
    from semsearch.types import Document
    import hashlib

    documents = []
    for number, value in enumerate(NASTY_VALUES + ["plain"]):
        text = f"Document number {number} about lighthouses."
        documents.append(
            Document(
                id=f"doc-{number}",
                source=f"doc-{number}",
                title=f"doc {number}",
                text=text,
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
                metadata={"tag": value},
            )
        )
    with SemanticSearch(**backend, encoder=encoder) as engine:
        engine.ingest_documents(documents)
        for number, value in enumerate(NASTY_VALUES):
            hits = engine.search("lighthouses", k=10, where={"tag": value})
            assert [hit.doc_id for hit in hits] == [f"doc-{number}"], value


# -- the command line in new processes ------------------------------------------


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "semsearch.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_cli_search_json_new_process(samples_db):
    result = _cli(
        "--uri", samples_db["uri"], "--collection", samples_db["collection"],
        "search", "How does write-ahead logging work?", "-k", "3", "--json",
    )
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 3
    expected_keys = {"id", "score", "text", "source", "title", "doc_id", "chunk", "start", "end", "metadata"}
    assert expected_keys <= set(hits[0])
    assert hits[0]["source"] == "html/sqlite-wal.html"


def test_cli_ingest_skips_bad_files(tmp_path):
    corpus = _write_corpus(tmp_path)
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02\xff" * 100)
    (corpus / "records.jsonl").write_text(
        '{"id": "a", "text": "Lighthouses guide ships."}\n{broken json\n', encoding="utf-8"
    )
    db = str(tmp_path / "cli.db")
    result = _cli("--uri", db, "ingest", str(corpus), "--json")
    assert result.returncode == 1
    assert "binary.txt" in result.stderr
    assert "records.jsonl:2" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["new"] == 3
    listing = _cli("--uri", db, "sources", "--json")
    sources = sorted(json.loads(line)["source"] for line in listing.stdout.splitlines())
    assert sources == ["cats.txt", "records.jsonl", "rockets.md"]


def test_cli_similarity_paraphrase():
    def score(first: str, second: str) -> float:
        result = _cli("similarity", first, second)
        assert result.returncode == 0, result.stderr
        return float(result.stdout)

    paraphrase = score("The cat sat on the mat", "A feline rested on the rug")
    unrelated_a = score("The cat sat on the mat", "Quarterly tax filings are due in April")
    unrelated_b = score("A feline rested on the rug", "Quarterly tax filings are due in April")
    assert paraphrase > unrelated_a + 0.3
    assert paraphrase > unrelated_b + 0.3


def test_cli_missing_collection_message(tmp_path):
    result = _cli("--uri", str(tmp_path / "none.db"), "search", "anything")
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr
