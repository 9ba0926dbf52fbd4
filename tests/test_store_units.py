"""Pure conversions of the store and ingest layers, plus byte limits on Milvus Lite."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semsearch.filters import combine, equality, field_reference, parse_where, quote_string
from semsearch.errors import FilterError
from semsearch.ingest import split_oversized
from semsearch.store import TEXT_MAX_BYTES, batches_by_size, chunk_id, fit_bytes
from semsearch.types import Chunk, Document


def test_chunk_id_distinguishes_separator_in_doc_id():
    assert chunk_id("a-1", 2) != chunk_id("a", 12)
    assert chunk_id("a:1", 0) != chunk_id("a", 10)


@given(st.text(max_size=50), st.integers(0, 10_000))
def test_chunk_id_fits_primary_key(doc_id, ordinal):
    assert len(chunk_id(doc_id, ordinal)) <= 64


def test_fit_bytes_keeps_whole_characters():
    text = "é" * 10  # 2 bytes each
    assert fit_bytes(text, 5) == "éé"
    assert fit_bytes(text, 100) == text


def test_batches_by_size_bounds():
    rows = [
        {"id": str(i), "vector": [0.0] * 4, "text": "x" * 1000, "metadata": {}}
        for i in range(50)
    ]
    batches = list(batches_by_size(rows, max_rows=8, max_bytes=5_000))
    assert sum(len(batch) for batch in batches) == 50
    assert all(len(batch) <= 8 for batch in batches)
    assert all(len(batch) <= 4 for batch in batches)


def test_batches_by_size_oversized_row_alone():
    rows = [{"id": "a", "vector": [0.0], "text": "x" * 100, "metadata": {}}] * 3
    assert [len(b) for b in batches_by_size(rows, max_bytes=10)] == [1, 1, 1]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("aé漢😀 "), min_size=1, max_size=400), st.integers(8, 64))
def test_split_oversized_spans_exact(text, max_bytes):
    chunk = Chunk(doc_id="d", ordinal=0, text=text, start=3, end=3 + len(text))
    document_text = "abc" + text
    pieces = split_oversized([chunk], max_bytes=max_bytes)
    assert "".join(piece.text for piece in pieces) == text
    assert all(len(piece.text.encode("utf-8")) <= max_bytes for piece in pieces)
    assert all(document_text[p.start : p.end] == p.text for p in pieces)
    assert [p.ordinal for p in pieces] == list(range(len(pieces)))


def test_quote_string_escapes():
    assert quote_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_field_reference_metadata_path():
    assert field_reference("year") == 'metadata["year"]'
    assert field_reference("author.name") == 'metadata["author"]["name"]'
    assert field_reference("source") == "source"


@pytest.mark.parametrize("key", ["", "a b", 'x"]', "1abc", "a..b", "a or 1"])
def test_field_reference_rejects_invalid_key(key):
    with pytest.raises(FilterError, match="invalid filter key"):
        field_reference(key)


def test_equality_numeric_string_matches_both_types():
    assert equality("year", "1961") == '(metadata["year"] == "1961" or metadata["year"] == 1961)'


def test_parse_where_requires_equals():
    with pytest.raises(FilterError, match="key=value"):
        parse_where(["year"])


def test_combine_and_joins():
    assert combine("ordinal > 0", {"source": "a.txt"}) == '(ordinal > 0) and source == "a.txt"'
    assert combine(None, None) == ""


def _document(text: str, doc_id: str = "doc") -> Document:
    return Document(
        id=doc_id,
        source=doc_id,
        title=doc_id,
        text=text,
        content_hash=hashlib.sha256(text.encode()).hexdigest(),
    )


def test_multibyte_chunk_near_byte_limit_stored(tmp_path, encoder):
    """Text whose words are each one unknown token can pass Milvus' byte limit."""
    from semsearch import SemanticSearch

    word = "漢" * 120  # longer than WordPiece's 100-character word limit
    text = " ".join([word] * 200)  # about 72 KB of UTF-8 in 200 tokens
    assert len(text.encode("utf-8")) > TEXT_MAX_BYTES
    with SemanticSearch(uri=str(tmp_path / "bytes.db"), encoder=encoder) as engine:
        report = engine.ingest_documents([_document(text)])
        rows = engine.store.query("", ["text", "char_start", "char_end"])
    assert report.skipped == []
    rows.sort(key=lambda row: row["char_start"])
    assert len(rows) > 1
    assert all(text[row["char_start"] : row["char_end"]] == row["text"] for row in rows)
    assert rows[0]["char_start"] == 0
    assert rows[-1]["char_end"] == len(text)
    gaps = [b["char_start"] - a["char_end"] for a, b in zip(rows, rows[1:])]
    assert all(gap <= 0 for gap in gaps)
    assert all(len(row["text"].encode("utf-8")) <= TEXT_MAX_BYTES for row in rows)


def test_duplicate_document_id_one_row_set(tmp_path, encoder):
    from semsearch import SemanticSearch

    with SemanticSearch(uri=str(tmp_path / "dup.db"), encoder=encoder) as engine:
        report = engine.ingest_documents(
            [_document("first text about owls"), _document("second text about owls")]
        )
        rows = engine.store.query("", ["text"])
    assert [row["text"] for row in rows] == ["first text about owls"]
    assert len(report.skipped) == 1
    assert "duplicate document id 'doc'" in report.skipped[0].reason


@pytest.mark.parametrize("name", ["my-docs", "notes.v2", "café", "1st", "", "a b"])
def test_collection_name_rejected(name):
    from semsearch.errors import ConfigError
    from semsearch.store import MilvusStore

    with pytest.raises(ConfigError, match="invalid collection name"):
        MilvusStore("unused.db", name)


@pytest.mark.parametrize("name", ["semsearch", "eval_scifact", "_private", "Docs2"])
def test_collection_name_accepted(name):
    from semsearch.store import MilvusStore

    assert MilvusStore("unused.db", name).collection == name


def test_collection_name_suggestion():
    from semsearch.errors import ConfigError
    from semsearch.store import MilvusStore

    with pytest.raises(ConfigError, match="'my_docs'"):
        MilvusStore("unused.db", "my-docs")
