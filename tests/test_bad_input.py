"""Bad input, one small made-up case each: stored correctly or rejected with a reason.

Runs on the real bundled model and Milvus Lite files under tmp_path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semsearch import SemanticSearch
from semsearch.errors import ConfigError, ModelMismatchError
from semsearch.store import TEXT_MAX_BYTES, MilvusStore, chunk_id
from semsearch.types import Document


def _document(text: str, doc_id: str = "doc", **metadata) -> Document:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Document(doc_id, doc_id, doc_id, text, digest, metadata)


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "semsearch.cli", *args],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=600,
    )


def _covering_rows(rows: list[dict], text: str) -> bool:
    """Return whether rows, sorted by span, cover ``text`` end to end exactly."""
    rows = sorted(rows, key=lambda row: row["char_start"])
    exact = all(
        text[row["char_start"] : row["char_end"]] == row["text"] for row in rows
    )
    gapless = all(b["char_start"] <= a["char_end"] for a, b in itertools.pairwise(rows))
    return (
        exact
        and gapless
        and rows[0]["char_start"] == 0
        and rows[-1]["char_end"] == len(text)
    )


# -- text near the byte limit ----------------------------------------------------


def test_multibyte_text_near_byte_limit_stored_whole(tmp_path, encoder):
    # Each word is 120 characters (past WordPiece's 100), so it is one unknown
    # token of 360 UTF-8 bytes: 200 of them pass 65,535 bytes within the budget.
    word = "é😀漢" * 40
    text = " ".join([word] * 200)
    with SemanticSearch(uri=str(tmp_path / "mb.db"), encoder=encoder) as engine:
        report = engine.ingest_documents([_document(text)])
        rows = engine.store.query("", ["text", "char_start", "char_end"])
    assert len(text.encode("utf-8")) > TEXT_MAX_BYTES
    assert report.skipped == []
    assert _covering_rows(rows, text)
    assert all(len(row["text"].encode("utf-8")) <= TEXT_MAX_BYTES for row in rows)


# -- filter values through the command line --------------------------------------

CLI_NASTY_VALUES = [
    "C:\\Users\\keeper\\log.txt",
    'x" or source != "',
    "two\nlines",
]


def test_cli_where_values_match_literally(tmp_path, encoder):
    db = str(tmp_path / "where.db")
    documents = [
        _document(f"Lighthouse note number {n}.", f"doc-{n}", tag=value)
        for n, value in enumerate([*CLI_NASTY_VALUES, "plain"])
    ]
    with SemanticSearch(uri=db, encoder=encoder) as engine:
        engine.ingest_documents(documents)
    for number, value in enumerate(CLI_NASTY_VALUES):
        result = _cli(
            "--uri", db, "search", "lighthouse", "--where", f"tag={value}", "--json"
        )
        assert result.returncode == 0, result.stderr
        doc_ids = [json.loads(line)["doc_id"] for line in result.stdout.splitlines()]
        assert doc_ids == [f"doc-{number}"], value


# -- duplicate ids in one batch ----------------------------------------------------


def test_store_upsert_duplicate_id_one_row(tmp_path):
    def row(text: str) -> dict:
        return {
            "id": chunk_id("doc", 0),
            "vector": [1.0, 0.0, 0.0, 0.0],
            "text": text,
            "doc_id": "doc",
            "ordinal": 0,
            "chunk_count": 1,
            "char_start": 0,
            "char_end": len(text),
            "source": "doc",
            "title": "doc",
            "doc_hash": "h",
            "chunk_hash": "c",
            "metadata": {},
        }

    with MilvusStore(str(tmp_path / "dup.db"), "dup") as store:
        store.ensure_collection({"model": "test-vectors", "dim": 4})
        written = store.upsert([row("first"), row("second")])
        rows = store.query("", ["text"])
    assert written == 1
    assert [r["text"] for r in rows] == ["second"]


# -- another model on the same collection ----------------------------------------


class _OtherModel:
    """The real encoder reporting another model's fingerprint."""

    def __init__(self, encoder, **changes) -> None:
        self._encoder = encoder
        self.fingerprint = dict(encoder.fingerprint, **changes)

    def __getattr__(self, name):
        return getattr(self._encoder, name)


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "intfloat/e5-small-v2", "weights_sha256": "0" * 64},
        {"model": "BAAI/bge-base-en-v1.5", "dim": 768, "weights_sha256": "1" * 64},
    ],
    ids=["same-dim", "other-dim"],
)
def test_ingest_other_model_rejected(tmp_path, encoder, changes):
    uri = str(tmp_path / "model.db")
    with SemanticSearch(uri=uri, encoder=encoder) as engine:
        engine.ingest_documents([_document("Lighthouses guide ships.")])
        rows = engine.store.count()
    other = _OtherModel(encoder, **changes)
    with SemanticSearch(uri=uri, encoder=other) as engine:  # type: ignore[arg-type]
        with pytest.raises(ModelMismatchError) as raised:
            engine.ingest_documents([_document("Tides rise.", "second")])
        rows_after = engine.store.count()
    message = str(raised.value)
    assert "all-MiniLM-L6-v2" in message
    assert changes["model"] in message
    assert f"dim {changes.get('dim', 384)}" in message
    assert rows_after == rows


# -- chunk settings --------------------------------------------------------------


@pytest.mark.parametrize("overlap", [62, 64, 100])
def test_ingest_overlap_not_below_chunk_size(tmp_path, encoder, overlap):
    with SemanticSearch(
        uri=str(tmp_path / "o.db"),
        encoder=encoder,
        chunk_size=64,
        chunk_overlap=overlap,
    ) as engine:
        with pytest.raises(ConfigError, match=f"chunk overlap {overlap}") as raised:
            engine.ingest_documents([_document("Lighthouses guide ships.")])
        exists = engine.store.exists()
    assert "--chunk-overlap" in str(raised.value)
    assert not exists


def test_cli_overlap_not_below_chunk_size(tmp_path):
    corpus = _write(tmp_path / "corpus" / "a.txt", "Lighthouses guide ships.").parent
    result = _cli(
        "--uri", str(tmp_path / "o.db"), "ingest", str(corpus),
        "--chunk-size", "32", "--chunk-overlap", "32",
    )  # fmt: skip
    assert result.returncode == 1
    assert "chunk overlap 32" in result.stderr
    assert "Traceback" not in result.stderr


# -- text past the model limit without breaks ---------------------------------------

UNBROKEN_TEXTS = {
    "no-punctuation": " ".join(f"keeper{n} lit lamp" for n in range(900)),
    "no-whitespace": "lighthouse-keeper/" * 400,
    "one-long-word": "lighthouse" * 900,
}


@pytest.mark.parametrize("name", sorted(UNBROKEN_TEXTS))
def test_unbroken_text_split_not_truncated(tmp_path, encoder, caplog, name):
    text = UNBROKEN_TEXTS[name]
    with caplog.at_level(logging.WARNING, logger="semsearch.encoder"):
        with SemanticSearch(uri=str(tmp_path / "u.db"), encoder=encoder) as engine:
            report = engine.ingest_documents([_document(text)])
            rows = engine.store.query("", ["text", "char_start", "char_end"])
    longest = max(encoder.count_tokens(row["text"]) for row in rows)
    # WordPiece reads a word over 100 characters as one unknown token, so only
    # the other texts pass the model limit before the chunker splits them.
    if name != "one-long-word":
        assert encoder.count_tokens(text) > encoder.max_seq_length
    assert report.embedded == len(rows) > 1
    assert _covering_rows(rows, text)
    assert longest + 2 <= encoder.max_seq_length
    assert [
        r.getMessage() for r in caplog.records if "Truncated" in r.getMessage()
    ] == []


# -- documents without visible text ------------------------------------------------


def test_blank_files_skipped_not_embedded(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "empty.txt", "")
    _write(corpus / "spaces.txt", "  \n\t \r\n ")
    _write(corpus / "zero-width.txt", "\u200b\u200c\u200d\ufeff\u2060")
    _write(corpus / "real.txt", "Lighthouses guide ships.")
    with SemanticSearch(uri=str(tmp_path / "blank.db"), encoder=encoder) as engine:
        report = engine.ingest([corpus])
        sources = [document.source for document in engine.sources()]
    skipped = sorted(skipped.source for skipped in report.skipped)
    assert skipped == ["empty.txt", "spaces.txt", "zero-width.txt"]
    assert report.embedded == 1
    assert sources == ["real.txt"]


def test_blank_documents_api_skipped(tmp_path, encoder):
    documents = [_document("\u200b\u2060", "zw"), _document(" \n ", "ws")]
    with SemanticSearch(uri=str(tmp_path / "b.db"), encoder=encoder) as engine:
        report = engine.ingest_documents(documents)
        rows = engine.store.count()
    assert [skipped.source for skipped in report.skipped] == ["zw", "ws"]
    assert report.embedded == 0
    assert rows == 0


# -- encodings ---------------------------------------------------------------------

LATIN_TEXT = "Le gardien du phare mangea une crème brûlée près de la côte à Noël."


def test_non_utf8_files_decoded_or_named(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "latin1.txt", LATIN_TEXT.encode("latin-1"))
    _write(corpus / "utf16.txt", LATIN_TEXT.encode("utf-16"))
    mixed = LATIN_TEXT.encode("utf-8") + " Ça coûte cher.".encode("latin-1")
    _write(corpus / "mixed.txt", mixed)
    with SemanticSearch(uri=str(tmp_path / "enc.db"), encoder=encoder) as engine:
        report = engine.ingest([corpus])
        rows = engine.store.query("", ["source", "text"])
    texts = {row["source"]: row["text"] for row in rows}
    skipped = {skipped.source: skipped.reason for skipped in report.skipped}
    assert texts["latin1.txt"] == LATIN_TEXT
    assert texts["utf16.txt"] == LATIN_TEXT
    assert skipped == {}
    assert texts["mixed.txt"] == LATIN_TEXT + " Ça coûte cher."


# -- metadata from records ------------------------------------------------------------


def test_parquet_metadata_stored_as_json(tmp_path, encoder):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ["a", "b"],
            "text": ["Lighthouses guide ships.", "Tides rise twice a day."],
            "score": [float("nan"), 2.5],
            "count": pa.array([7, 8], type=pa.int64()),
            "seen": [dt.datetime(2024, 5, 1, 12, 30), None],
            "tags": [[1, 2], []],
            "grid": [[[0.5, float("nan")]], [[1.0]]],
        }
    )
    path = tmp_path / "records.parquet"
    pq.write_table(table, path)
    with SemanticSearch(uri=str(tmp_path / "pq.db"), encoder=encoder) as engine:
        report = engine.ingest([path])
        rows = engine.store.query("", ["doc_id", "metadata"])
    metadata = {row["doc_id"]: row["metadata"] for row in rows}
    first = metadata["records.parquet#a"]
    assert report.skipped == []
    assert "score" not in first
    assert metadata["records.parquet#b"]["score"] == 2.5
    assert first["count"] == 7
    assert first["seen"].startswith("2024-05-01T12:30")
    assert first["tags"] == [1, 2]
    assert first["grid"] == [[0.5, None]]
    assert json.loads(json.dumps(first, allow_nan=False)) == first


def test_csv_metadata_stored_as_json(tmp_path, encoder):
    path = _write(
        tmp_path / "records.csv",
        "id,text,score,when\n1,Lighthouses guide ships.,NaN,2024-05-01\n"
        "2,Tides rise twice a day.,3,\n",
    )
    with SemanticSearch(uri=str(tmp_path / "csv.db"), encoder=encoder) as engine:
        report = engine.ingest([path])
        rows = engine.store.query("", ["doc_id", "metadata"])
    assert report.skipped == []
    for row in rows:
        encoded = json.dumps(row["metadata"], allow_nan=False)
        assert json.loads(encoded) == row["metadata"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("ratio", float("nan")), ("limit", float("inf")), ("raw", b"bytes")],
)
def test_api_metadata_invalid_json_names_field(tmp_path, encoder, field, value):
    documents = [
        _document("Tides rise.", "bad", **{field: value}),
        _document("Buoys.", "ok"),
    ]
    with SemanticSearch(uri=str(tmp_path / "m.db"), encoder=encoder) as engine:
        report = engine.ingest_documents(documents)
        ids = [document.doc_id for document in engine.sources()]
    assert len(report.skipped) == 1
    assert f"metadata field {field!r}" in report.skipped[0].reason
    assert ids == ["ok"]


def test_api_metadata_numpy_scalar_named(tmp_path, encoder):
    import numpy as np

    documents = [_document("Tides rise.", "np", count=np.int64(3))]
    with SemanticSearch(uri=str(tmp_path / "np.db"), encoder=encoder) as engine:
        report = engine.ingest_documents(documents)
    assert "metadata field 'count'" in report.skipped[0].reason


# -- binary content behind a text extension ---------------------------------------------

FAKE_PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Length 44 /Filter /FlateDecode >>\nstream\nx\x9c\x0b\xc9\xc8,V\x00"
    b"\xa2D\x85\xe2\x92\xa2\xd4\xc4\\\x00\x8f\x12\t\x9b\nendstream\nendobj\n%%EOF\n"
)
PNG_BYTES = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02"
)


def test_binary_files_with_text_extension_skipped(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "report.txt", FAKE_PDF)
    _write(corpus / "image.md", PNG_BYTES)
    _write(corpus / "real.txt", "Lighthouses guide ships.")
    with SemanticSearch(uri=str(tmp_path / "bin.db"), encoder=encoder) as engine:
        report = engine.ingest([corpus])
        sources = [document.source for document in engine.sources()]
    reasons = {skipped.source: skipped.reason for skipped in report.skipped}
    assert sorted(reasons) == ["image.md", "report.txt"]
    assert all("binary" in reason or "PDF" in reason for reason in reasons.values())
    assert sources == ["real.txt"]


def test_cli_skip_lines_not_wrapped(tmp_path):
    """Piped stderr keeps each skipped file on one line, however long."""
    corpus = tmp_path / "corpus"
    _write(corpus / "good.txt", "Lighthouses guide ships at night.")
    binary = corpus / ("a-very-long-file-name-" * 4 + "binary.txt")
    binary.write_bytes(b"\x00\x01\x02 not text \x00" * 20)
    result = _cli("--uri", str(tmp_path / "w.db"), "ingest", str(corpus))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "skipped " in line]
    assert len(lines) == 1, result.stderr
    assert binary.name in lines[0]
    assert "binary file" in lines[0]
