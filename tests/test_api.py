"""The Python API for RAG apps: records in, async search, delete, prompt context.

Runs on the real bundled model and Milvus Lite files under tmp_path.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from semsearch import (
    CollectionNotFoundError,
    ConfigError,
    FilterError,
    Hit,
    SemanticSearch,
    document_from_record,
    format_context,
)
from tests.rag_corpus import DATABASE_QUESTION, RECORDS


@pytest.fixture(scope="module")
def corpus_db(tmp_path_factory, encoder):
    """A Milvus Lite file holding RECORDS; tests here only read it."""
    uri = str(tmp_path_factory.mktemp("api") / "corpus.db")
    with SemanticSearch(uri=uri, collection="corpus", encoder=encoder) as engine:
        report = engine.ingest_records(RECORDS)
    return {"uri": uri, "collection": "corpus", "report": report}


@pytest.fixture()
def engine(corpus_db, encoder):
    with SemanticSearch(
        uri=corpus_db["uri"], collection=corpus_db["collection"], encoder=encoder
    ) as engine:
        yield engine


@pytest.fixture()
def fresh_engine(tmp_path, encoder):
    """An engine over its own copy of RECORDS, for tests that delete."""
    with SemanticSearch(
        uri=str(tmp_path / "fresh.db"), collection="fresh", encoder=encoder
    ) as engine:
        engine.ingest_records(RECORDS)
        yield engine


def _hit(number: int, text: str = "some text", title: str = "A title") -> Hit:
    return Hit(
        id=f"chunk-{number}",
        score=1.0 - number / 10,
        text=text,
        doc_id=f"doc-{number}",
        chunk=0,
        start=0,
        end=len(text),
        source=f"docs/{number}.md",
        title=title,
    )


# -- ingest_records ----------------------------------------------------------


def test_ingest_records_report(corpus_db):
    report = corpus_db["report"]
    assert report.documents == len(RECORDS)
    assert report.new == len(RECORDS)
    assert report.chunks == len(RECORDS)
    assert report.skipped == []


def test_ingest_records_fields_stored(engine):
    hit = engine.search(DATABASE_QUESTION, k=1)[0]
    assert hit.doc_id == "sqlite-journal"
    assert hit.title == "Atomic commit in SQLite"
    assert hit.source == "notes/sqlite.md"
    assert hit.metadata == {"category": "databases", "year": 2004}


def test_ingest_records_rerun_unchanged(engine):
    report = engine.ingest_records(RECORDS)
    assert report.unchanged == len(RECORDS)
    assert report.chunks == 0


def test_ingest_records_objects_and_default_id(tmp_path, encoder):
    text = "Penguins cannot fly, but they swim very well."
    record = SimpleNamespace(text=text, metadata={"kind": "bird"})
    with SemanticSearch(uri=str(tmp_path / "o.db"), encoder=encoder) as engine:
        report = engine.ingest_records([record])
        hit = engine.search("birds that swim", k=1)[0]
    expected_id = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert report.new == 1
    assert hit.doc_id == expected_id
    assert hit.source == expected_id
    assert hit.metadata == {"kind": "bird"}


def test_ingest_records_skips_invalid(tmp_path, encoder):
    records = [
        {"text": "A valid record about gardening and tomatoes."},
        {"title": "no text here"},
        {"text": "Valid text", "metadata": ["not", "a", "dict"]},
        42,
    ]
    with SemanticSearch(uri=str(tmp_path / "s.db"), encoder=encoder) as engine:
        report = engine.ingest_records(records)
    reasons = {skipped.source: skipped.reason for skipped in report.skipped}
    assert report.new == 1
    assert set(reasons) == {"records[1]", "records[2]", "records[3]"}
    assert "string 'text'" in reasons["records[1]"]
    assert "['not', 'a', 'dict']" in reasons["records[2]"]
    assert "42" in reasons["records[3]"]


def test_ingest_records_single_dict_rejected(tmp_path, encoder):
    with (
        SemanticSearch(uri=str(tmp_path / "d.db"), encoder=encoder) as engine,
        pytest.raises(TypeError, match="wrap it in a list"),
    ):
        engine.ingest_records({"text": "one record"})


def test_document_from_record_extra_metadata_wins():
    document = document_from_record(
        {"text": "hello", "id": 7, "metadata": {"lang": "en", "team": "a"}},
        extra_metadata={"team": "b"},
    )
    assert document.id == "7"
    assert document.metadata == {"lang": "en", "team": "b"}
    assert document.title == ""


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "x", "id": ""}, "invalid record id ''"),
        ({"text": "x", "id": 1.5}, "invalid record id 1.5"),
        ({"text": "x", "title": 3}, "invalid record title 3"),
        ({"text": b"bytes"}, "invalid record text b'bytes'"),
    ],
)
def test_document_from_record_invalid(record, message):
    with pytest.raises(ConfigError, match=message):
        document_from_record(record)


# -- async search ------------------------------------------------------------


def test_asearch_matches_search(engine):
    expected = engine.search(DATABASE_QUESTION, k=3, where={"category": "databases"})
    found = asyncio.run(
        engine.asearch(DATABASE_QUESTION, k=3, where={"category": "databases"})
    )
    assert [hit.id for hit in found] == [hit.id for hit in expected]
    assert [hit.score for hit in found] == pytest.approx([h.score for h in expected])


def test_asearch_concurrent_calls(engine):
    questions = [DATABASE_QUESTION, "who owns a value in Rust?", "sleepy pets"] * 6
    expected = {q: [hit.id for hit in engine.search(q, k=2)] for q in questions}

    async def run_all():
        return await asyncio.gather(*(engine.asearch(q, k=2) for q in questions))

    results = asyncio.run(run_all())
    for question, hits in zip(questions, results, strict=True):
        assert [hit.id for hit in hits] == expected[question], question


def test_search_from_threads(engine):
    questions = ["moon landing", "write-ahead log checkpoint", "channels"] * 4
    expected = {q: [hit.id for hit in engine.search(q, k=2)] for q in questions}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda q: engine.search(q, k=2), questions))
    for question, hits in zip(questions, results, strict=True):
        assert [hit.id for hit in hits] == expected[question], question


def test_asearch_many_bad_filter(engine):
    with pytest.raises(FilterError, match="invalid filter expression"):
        asyncio.run(engine.asearch_many(["x"], filter="doc_id =="))


def test_search_many_query_vectors(engine):
    queries = [DATABASE_QUESTION, "cats"]
    vectors = engine.embed_queries(queries)
    expected = engine.search_many(queries, k=3)
    found = engine.search_many(queries, k=3, query_vectors=vectors)
    assert [[h.id for h in hits] for hits in found] == [
        [h.id for h in hits] for hits in expected
    ]


def test_search_many_query_vectors_shape(engine):
    vectors = engine.embed_queries(["one"])
    with pytest.raises(ConfigError, match="one row each"):
        engine.search_many(["one", "two"], query_vectors=vectors)


def test_engine_context_manager_closes(corpus_db, encoder):
    with SemanticSearch(
        uri=corpus_db["uri"], collection=corpus_db["collection"], encoder=encoder
    ) as engine:
        asyncio.run(engine.asearch("cats", k=1))
    assert engine._store is None
    assert engine._executor is None


# -- delete ------------------------------------------------------------------


def _doc_ids(engine: SemanticSearch) -> set[str]:
    return {document.doc_id for document in engine.sources()}


def test_delete_by_ids(fresh_engine):
    deleted = fresh_engine.delete(ids=["cats", "apollo", "no-such-id"])
    assert deleted == 2
    assert _doc_ids(fresh_engine) == {r["id"] for r in RECORDS} - {"cats", "apollo"}


def test_delete_by_source(fresh_engine):
    deleted = fresh_engine.delete(source="notes/rust.md")
    assert deleted == 2
    assert "rust-ownership" not in _doc_ids(fresh_engine)


def test_delete_by_filter(fresh_engine):
    deleted = fresh_engine.delete(filter='metadata["year"] < 2005')
    assert deleted == 2
    assert _doc_ids(fresh_engine) & {"apollo", "sqlite-journal"} == set()


def test_delete_conditions_combined(fresh_engine):
    deleted = fresh_engine.delete(
        ids=["sqlite-wal", "rust-channels"], source="notes/sqlite.md"
    )
    assert deleted == 1
    assert "rust-channels" in _doc_ids(fresh_engine)


def test_delete_no_match(fresh_engine):
    assert fresh_engine.delete(source="notes/missing.md") == 0


def test_delete_bad_filter(fresh_engine):
    with pytest.raises(FilterError, match=r"invalid filter expression 'doc_id =='"):
        fresh_engine.delete(filter="doc_id == ")


def test_delete_requires_condition(fresh_engine):
    with pytest.raises(ConfigError, match="needs ids, source or filter"):
        fresh_engine.delete()


def test_delete_empty_filter(fresh_engine):
    with pytest.raises(ConfigError, match="empty filter"):
        fresh_engine.delete(filter="  ")


def test_delete_missing_collection(tmp_path, encoder):
    with (
        SemanticSearch(uri=str(tmp_path / "none.db"), encoder=encoder) as engine,
        pytest.raises(CollectionNotFoundError, match="not found"),
    ):
        engine.delete(ids=["a"])


# -- format_context ----------------------------------------------------------


def test_format_context_numbered_blocks():
    context = format_context([_hit(1, "First text."), _hit(2, "Second text.")])
    assert context == (
        "[1] A title (docs/1.md)\nFirst text.\n\n[2] A title (docs/2.md)\nSecond text."
    )


def test_format_context_untitled_hit_shows_source():
    context = format_context([_hit(1, "Body.", title="")])
    assert context == "[1] docs/1.md\nBody."


def test_format_context_max_chars_drops_blocks():
    hits = [_hit(number, "word " * 40) for number in range(1, 4)]
    full = format_context(hits)
    limit = len(format_context(hits[:2])) + 10
    context = format_context(hits, max_chars=limit)
    assert len(full) > limit
    assert len(context) <= limit
    assert context == format_context(hits[:2])


def test_format_context_cuts_last_block():
    hits = [_hit(1, "alpha " * 100)]
    context = format_context(hits, max_chars=200)
    assert len(context) <= 200
    assert context.startswith("[1] A title (docs/1.md)\nalpha alpha")
    assert context.endswith("alpha...")


def test_format_context_budget_too_small():
    assert format_context([_hit(1, "alpha " * 100)], max_chars=40) == ""


@pytest.mark.parametrize("max_chars", [0, -5, 2.5, True])
def test_format_context_invalid_max_chars(max_chars):
    with pytest.raises(ConfigError, match="invalid max_chars"):
        format_context([_hit(1)], max_chars=max_chars)


# -- the RAG example ---------------------------------------------------------


def test_rag_example_prompt(engine):
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "rag_example", REPO_ROOT / "examples" / "rag.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args([DATABASE_QUESTION, "-k", "2", "--max-chars", "500"])
    prompt = module.build_prompt(engine, args)
    assert "[1] Atomic commit in SQLite (notes/sqlite.md)" in prompt
    assert prompt.endswith(f"Question: {DATABASE_QUESTION}\nAnswer:")
    assert "[3]" not in prompt
