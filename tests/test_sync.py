"""Incremental sync: chunk-level reuse, pruning, dry runs, retries and large deletes.

Everything runs on the real bundled model and Milvus Lite files under tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from semsearch import SemanticSearch
from semsearch import store as store_module
from semsearch.cli import main
from semsearch.errors import ConfigError, ModelMismatchError, StoreError
from semsearch.ingest import ROOT_KEY, plan_prune
from semsearch.migrate import migrate
from semsearch.store import MilvusStore, retry_call

PARAGRAPHS = [
    f"Paragraph {number} tells how lighthouse keeper number {number} trimmed the "
    f"wick, polished the lens and logged the passing ships of night {number}."
    for number in range(24)
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _sources(engine: SemanticSearch) -> list[str]:
    return sorted(document.source for document in engine.sources())


# -- chunk hashes and vector reuse ----------------------------------------------


def test_ingest_changed_document_reuses_unchanged_chunks(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "log.txt", "\n\n".join(PARAGRAPHS))
    with SemanticSearch(
        uri=str(tmp_path / "reuse.db"), encoder=encoder, chunk_size=48, chunk_overlap=0
    ) as engine:
        first = engine.ingest([corpus])
        edited = PARAGRAPHS[:-1] + ["The last keeper switched the lamp to LED."]
        _write(corpus / "log.txt", "\n\n".join(edited))
        second = engine.ingest([corpus])
        rows = engine.store.query("", ["text", "vector", "chunk_hash", "ordinal"])
    rows.sort(key=lambda row: row["ordinal"])
    fresh = encoder.encode_passages([row["text"] for row in rows])
    stored = np.array([row["vector"] for row in rows], dtype=np.float32)

    assert first.embedded == first.chunks
    assert first.reused == 0
    assert second.changed == 1
    assert second.reused > 0
    assert second.embedded < first.embedded
    assert second.embedded + second.reused == second.chunks
    assert np.allclose(stored, fresh, atol=1e-4)
    assert all(
        row["chunk_hash"] == hashlib.sha256(row["text"].encode()).hexdigest()
        for row in rows
    )


def test_ingest_unchanged_document_embeds_nothing(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "log.txt", "\n\n".join(PARAGRAPHS[:3]))
    with SemanticSearch(uri=str(tmp_path / "same.db"), encoder=encoder) as engine:
        engine.ingest([corpus])
        report = engine.ingest([corpus])
    assert report.unchanged == 1
    assert report.embedded == 0
    assert report.chunks == 0


def test_ingest_old_collection_without_chunk_hash(tmp_path, encoder, monkeypatch):
    """A collection created before rows had a chunk hash still takes writes."""
    corpus = tmp_path / "corpus"
    _write(corpus / "log.txt", "\n\n".join(PARAGRAPHS[:6]))
    with SemanticSearch(
        uri=str(tmp_path / "old.db"), encoder=encoder, chunk_size=48
    ) as engine:
        client = engine.store.client
        create_schema = client.create_schema

        def create_schema_without_chunk_hash(**kwargs):
            schema = create_schema(**kwargs)
            add_field = schema.add_field

            def add_field_unless_chunk_hash(name, *args, **options):
                if name == store_module.CHUNK_HASH_FIELD:
                    return schema
                return add_field(name, *args, **options)

            schema.add_field = add_field_unless_chunk_hash
            return schema

        monkeypatch.setattr(client, "create_schema", create_schema_without_chunk_hash)
        engine.ingest([corpus])
        _write(corpus / "log.txt", "\n\n".join(PARAGRAPHS[:7]))
        report = engine.ingest([corpus])
        has_chunk_hash = engine.store.has_chunk_hash
    assert not has_chunk_hash
    assert report.changed == 1
    assert report.reused == 0
    assert report.skipped == []


def test_lite_ingest_flushes_every_few_rows(tmp_path, encoder, monkeypatch):
    """Rows reach Lite segment files during the run, and the sync still holds."""
    monkeypatch.setattr(store_module, "LITE_ROWS_PER_FLUSH", 5)
    corpus = tmp_path / "corpus"
    for number in range(4):
        _write(corpus / f"log{number}.txt", "\n\n".join(PARAGRAPHS[number * 6 :][:6]))
    uri = tmp_path / "flush.db"
    flushes = []
    with SemanticSearch(uri=str(uri), encoder=encoder, chunk_size=48) as engine:
        flush = engine.store.flush
        monkeypatch.setattr(engine.store, "flush", lambda: flushes.append(1) or flush())
        first = engine.ingest([corpus])
        first_flushes = len(flushes)
        again = engine.ingest([corpus])
        hits = engine.search("who polished the lens on night 13?", k=1)

    assert first.chunks >= 5
    # One flush inside the run (all rows come in one write). None at its end,
    # because no rows are pending then.
    assert first_flushes == 1
    assert list(uri.rglob("*.parquet"))
    assert again.unchanged == 4
    assert again.chunks == 0
    assert "night 13" in hits[0].text


@pytest.mark.parametrize(("minimum", "expected"), [(1, 1), (10_000, 0)])
def test_lite_final_flush_needs_pending_rows(
    tmp_path, encoder, monkeypatch, minimum, expected
):
    monkeypatch.setattr(store_module, "LITE_MIN_ROWS_TO_FLUSH", minimum)
    corpus = tmp_path / "corpus"
    _write(corpus / "log.txt", "\n\n".join(PARAGRAPHS[:6]))
    flushes = []
    with SemanticSearch(uri=str(tmp_path / "end.db"), encoder=encoder) as engine:
        flush = engine.store.flush
        monkeypatch.setattr(engine.store, "flush", lambda: flushes.append(1) or flush())
        report = engine.ingest([corpus])
        pending = engine.store.unflushed_rows

    assert report.chunks >= 1
    assert len(flushes) == expected
    assert pending == (0 if expected else report.chunks)


def test_failed_flush_keeps_ingest(tmp_path, encoder, monkeypatch, caplog):
    """A flush that fails after the rows are written is logged, not raised."""
    monkeypatch.setattr(store_module, "LITE_MIN_ROWS_TO_FLUSH", 1)
    corpus = tmp_path / "corpus"
    _write(corpus / "log.txt", PARAGRAPHS[0])

    def failing_flush() -> None:
        raise StoreError("flush failed: disk full", retryable=False)

    with SemanticSearch(uri=str(tmp_path / "fail.db"), encoder=encoder) as engine:
        monkeypatch.setattr(engine.store, "flush", failing_flush)
        report = engine.ingest([corpus])
        stored = engine.store.count()

    assert report.ok
    assert stored == report.chunks
    assert "flush of collection" in caplog.text
    assert "disk full" in caplog.text


def _lite_source(tmp_path, encoder) -> MilvusStore:
    corpus = tmp_path / "corpus"
    for number in range(3):
        text = "\n\n".join(PARAGRAPHS[number * 6 :][:6])
        _write(corpus / f"log{number}.txt", text)
    uri = str(tmp_path / "source.db")
    with SemanticSearch(uri=uri, encoder=encoder, chunk_size=48) as engine:
        assert engine.ingest([corpus]).chunks >= 6
    return MilvusStore(str(tmp_path / "source.db"), "semsearch")


def test_migrate_into_lite_flushes_as_it_copies(tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(store_module, "LITE_ROWS_PER_FLUSH", 4)
    source = _lite_source(tmp_path, encoder)
    target = MilvusStore(str(tmp_path / "target.db"), "copy")
    pending = []
    flush = target.flush
    monkeypatch.setattr(
        target, "flush", lambda: pending.append(target.unflushed_rows) or flush()
    )
    with source, target:
        report = migrate(source, target, batch_size=2)
        stored = target.count()
    assert report.rows == stored >= 6
    # Every 4 rows during the copy, then the rest at the end.
    assert pending[:-1] == [4] * (report.rows // 4)
    assert sum(pending) == report.rows
    assert target.unflushed_rows == 0


def test_migrate_failed_flush_keeps_copy(tmp_path, encoder, monkeypatch, caplog):
    source = _lite_source(tmp_path, encoder)
    target = MilvusStore(str(tmp_path / "target.db"), "copy")

    def failing_flush() -> None:
        raise StoreError("flush failed: disk full", retryable=False)

    monkeypatch.setattr(target, "flush", failing_flush)
    with source, target:
        report = migrate(source, target)
        stored = target.count()
    assert stored == report.rows >= 6
    assert "disk full" in caplog.text


def test_migrate_into_other_model_names_both(tmp_path, encoder):
    source = _lite_source(tmp_path, encoder)
    target = MilvusStore(str(tmp_path / "target.db"), "copy")
    with source, target:
        target.ensure_collection({"model": "another-model", "dim": 384})
        with pytest.raises(ModelMismatchError) as caught:
            migrate(source, target)
        stored = target.count()
    message = str(caught.value)
    assert "target collection 'copy'" in message
    assert "another-model" in message
    assert "source collection 'semsearch'" in message
    assert "another --to-collection" in message
    assert stored == 0


def test_migrate_onto_own_alias_rejected(tmp_path, encoder):
    source = _lite_source(tmp_path, encoder)
    with source:
        source.create_alias("nickname", "semsearch")
        rows = source.count()
        target = MilvusStore(source.uri, "nickname")
        with target, pytest.raises(ConfigError, match="one collection through an alias"):
            migrate(source, target)
        assert source.count() == rows


def test_first_ingest_skips_stored_lookups(tmp_path, encoder, monkeypatch):
    """A run into an empty collection looks nothing up, and a later run does."""
    corpus = tmp_path / "corpus"
    _write(corpus / "a.txt", PARAGRAPHS[0])
    _write(corpus / "b.txt", PARAGRAPHS[1])
    lookups: list[list[str]] = []
    lookup = MilvusStore.stored_documents
    monkeypatch.setattr(
        MilvusStore,
        "stored_documents",
        lambda store, ids: lookups.append(list(ids)) or lookup(store, ids),
    )
    with SemanticSearch(uri=str(tmp_path / "skip.db"), encoder=encoder) as engine:
        first = engine.ingest([corpus])
        first_lookups = len(lookups)
        _write(corpus / "b.txt", PARAGRAPHS[2])
        second = engine.ingest([corpus])

    assert first.new == 2
    assert first_lookups == 0
    assert sum(len(ids) for ids in lookups) == 2
    assert (second.unchanged, second.changed) == (1, 1)


# -- prune -------------------------------------------------------------------


def test_prune_removed_file_deleted(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "keep.txt", "Keepers trim wicks.")
    _write(corpus / "gone.txt", "Foghorns sound in fog.")
    with SemanticSearch(uri=str(tmp_path / "p.db"), encoder=encoder) as engine:
        engine.ingest([corpus])
        (corpus / "gone.txt").unlink()
        report = engine.ingest([corpus], prune=True)
        remaining = _sources(engine)
    assert report.deleted == 1
    assert remaining == ["keep.txt"]


def test_prune_other_root_untouched(tmp_path, encoder):
    first = tmp_path / "first"
    second = tmp_path / "second"
    _write(first / "a.txt", "Lighthouses guide ships past reefs.")
    _write(second / "b.txt", "Tides rise twice a day.")
    with SemanticSearch(uri=str(tmp_path / "roots.db"), encoder=encoder) as engine:
        engine.ingest([first])
        engine.ingest([second])
        report = engine.ingest([first], prune=True)
        remaining = _sources(engine)
    assert report.deleted == 0
    assert remaining == ["a.txt", "b.txt"]


def test_prune_excluded_file_kept(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "a.txt", "Lighthouses guide ships past reefs.")
    _write(corpus / "notes.md", "# Notes\n\nBuoys mark channels.")
    with SemanticSearch(uri=str(tmp_path / "ex.db"), encoder=encoder) as engine:
        engine.ingest([corpus])
        report = engine.ingest([corpus], exclude=["*.md"], prune=True)
        remaining = _sources(engine)
    assert report.deleted == 0
    assert remaining == ["a.txt", "notes.md"]


def test_prune_removed_record_deleted(tmp_path, encoder):
    records = tmp_path / "records.jsonl"
    lines = [
        json.dumps({"id": n, "text": f"Record {n} about tides."}) for n in range(3)
    ]
    _write(records, "\n".join(lines) + "\n")
    with SemanticSearch(uri=str(tmp_path / "rec.db"), encoder=encoder) as engine:
        engine.ingest([records])
        _write(records, "\n".join(lines[:2]) + "\n")
        report = engine.ingest([records], prune=True)
        ids = sorted(document.doc_id for document in engine.sources())
    assert report.deleted == 1
    assert ids == ["records.jsonl#0", "records.jsonl#1"]


def test_prune_skipped_source_kept(tmp_path, encoder):
    records = tmp_path / "records.jsonl"
    lines = [
        json.dumps({"id": n, "text": f"Record {n} about tides."}) for n in range(2)
    ]
    _write(records, "\n".join(lines) + "\n")
    with SemanticSearch(uri=str(tmp_path / "skip.db"), encoder=encoder) as engine:
        engine.ingest([records])
        _write(records, lines[0] + "\n{broken json\n")
        report = engine.ingest([records], prune=True)
        ids = sorted(document.doc_id for document in engine.sources())
    assert report.deleted == 0
    assert ids == ["records.jsonl#0", "records.jsonl#1"]


def test_prune_without_root_never_deleted(tmp_path, encoder):
    from semsearch.types import Document

    text = "Documents from the Python API carry no ingest root."
    document = Document(
        "api-doc", "api-doc", "api", text, hashlib.sha256(text.encode()).hexdigest()
    )
    corpus = tmp_path / "corpus"
    _write(corpus / "a.txt", "Lighthouses guide ships past reefs.")
    with SemanticSearch(uri=str(tmp_path / "api.db"), encoder=encoder) as engine:
        engine.ingest_documents([document])
        report = engine.ingest([corpus], prune=True)
        remaining = _sources(engine)
    assert report.deleted == 0
    assert remaining == ["a.txt", "api-doc"]


def test_ingest_records_root_metadata(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "a.txt", "Lighthouses guide ships past reefs.")
    with SemanticSearch(uri=str(tmp_path / "meta.db"), encoder=encoder) as engine:
        engine.ingest([corpus])
        rows = engine.store.query("", ["metadata"])
    assert rows[0]["metadata"][ROOT_KEY] == str(corpus.resolve())


def test_plan_prune_rules(tmp_path):
    root = tmp_path / "root"
    _write(root / "exists.txt", "x")
    _write(root / "records.jsonl", "{}")
    stored = [
        ("exists.txt", "exists.txt", str(root)),  # seen this run
        ("missing.txt", "missing.txt", str(root)),  # file deleted
        ("records.jsonl#7", "records.jsonl", str(root)),  # record removed
        ("excluded", "exists.txt", str(root)),  # file exists, not loaded
        ("bad.jsonl#1", "bad.jsonl", str(root)),  # skipped this run
    ]
    listed = {(str(root), "exists.txt"), (str(root), "records.jsonl")}
    listed.discard((str(root), "exists.txt"))
    doomed = plan_prune(stored, {"exists.txt"}, listed, {"bad.jsonl"})
    assert sorted(doomed) == ["missing.txt", "records.jsonl#7"]


# -- dry run -----------------------------------------------------------------


def test_dry_run_creates_no_collection(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "a.txt", "Lighthouses guide ships past reefs.")
    with SemanticSearch(uri=str(tmp_path / "dry.db"), encoder=encoder) as engine:
        report = engine.ingest([corpus], dry_run=True, prune=True)
        exists = engine.store.exists()
    assert report.new == 1
    assert report.chunks == 0
    assert report.dry_run
    assert not exists


def test_dry_run_plan_writes_nothing(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    _write(corpus / "same.txt", "Lighthouses guide ships past reefs.")
    _write(corpus / "edit.txt", "Tides rise twice a day.")
    _write(corpus / "gone.txt", "Foghorns sound in fog.")
    with SemanticSearch(uri=str(tmp_path / "plan.db"), encoder=encoder) as engine:
        engine.ingest([corpus])
        rows_before = engine.store.query("", ["id", "text"])
        _write(corpus / "edit.txt", "Tides rise and fall twice a day.")
        _write(corpus / "new.txt", "Buoys mark the channel.")
        (corpus / "gone.txt").unlink()
        report = engine.ingest([corpus], dry_run=True, prune=True)
        rows_after = engine.store.query("", ["id", "text"])
    assert (report.new, report.changed, report.unchanged, report.deleted) == (
        1,
        1,
        1,
        1,
    )
    assert report.embedded == 0
    assert sorted(map(str, rows_after)) == sorted(map(str, rows_before))


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "semsearch.cli", *args],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_cli_ingest_dry_run_prune(tmp_path):
    corpus = tmp_path / "corpus"
    _write(corpus / "a.txt", "Lighthouses guide ships past reefs.")
    _write(corpus / "b.txt", "Tides rise twice a day.")
    db = str(tmp_path / "cli.db")
    first = _cli("--uri", db, "ingest", str(corpus), "--json")
    (corpus / "b.txt").unlink()
    _write(corpus / "c.txt", "Buoys mark the channel.")
    plan = _cli("--uri", db, "ingest", str(corpus), "--prune", "--dry-run", "--json")
    text_plan = _cli("--uri", db, "ingest", str(corpus), "--prune", "--dry-run")
    applied = _cli("--uri", db, "ingest", str(corpus), "--prune", "--json")
    listing = _cli("--uri", db, "sources", "--json")

    assert first.returncode == 0, first.stderr
    assert plan.returncode == 0, plan.stderr
    summary = json.loads(plan.stdout)
    assert (summary["new"], summary["changed"], summary["unchanged"]) == (1, 0, 1)
    assert summary["deleted"] == 1
    assert summary["dry_run"] is True
    assert "1 new, 0 changed, 1 unchanged, 1 to delete" in text_plan.stderr
    assert json.loads(applied.stdout)["deleted"] == 1
    sources = sorted(json.loads(line)["source"] for line in listing.stdout.splitlines())
    assert sources == ["a.txt", "c.txt"]


# -- large documents and deletes past the query cap -----------------------------

LARGE_ROWS = 20_000
SMALL_DIM = 8


def _random_rows(doc_id: str, count: int, seed: int) -> list[dict]:
    from semsearch.store import chunk_id

    vectors = np.random.default_rng(seed).normal(size=(count, SMALL_DIM))
    return [
        {
            "id": chunk_id(doc_id, ordinal),
            "vector": [float(x) for x in vectors[ordinal]],
            "text": f"chunk {ordinal}",
            "doc_id": doc_id,
            "ordinal": ordinal,
            "chunk_count": count,
            "char_start": 0,
            "char_end": 0,
            "source": doc_id,
            "title": doc_id,
            "doc_hash": "h",
            "chunk_hash": "c",
            "metadata": {},
        }
        for ordinal in range(count)
    ]


@pytest.fixture()
def large_store(tmp_path):
    fingerprint = {"model": "random-test-vectors", "dim": SMALL_DIM}
    with MilvusStore(str(tmp_path / "large.db"), "large") as store:
        store.ensure_collection(fingerprint)
        store.upsert(_random_rows("big", LARGE_ROWS, seed=1))
        store.upsert(_random_rows("small", 3, seed=2))
        yield store


def test_store_query_past_result_cap(large_store):
    rows = large_store.query('doc_id == "big"', ["ordinal"])
    assert len(rows) == LARGE_ROWS
    assert len({row["ordinal"] for row in rows}) == LARGE_ROWS


def test_store_stored_documents_large(large_store):
    found = large_store.stored_documents(["big", "small"])
    assert found["big"].stored_chunks == LARGE_ROWS
    assert found["big"].is_complete("h")
    assert found["small"].stored_chunks == 3


def test_store_delete_stale_chunks_large(large_store):
    large_store.delete_stale_chunks("big", 5_000)
    assert large_store.count('doc_id == "big"') == 5_000
    assert large_store.count() == 5_003
    assert not large_store.stored_documents(["big"])["big"].is_complete("h")


def test_store_delete_large_document(large_store):
    large_store.delete_documents(["big"])
    assert large_store.count() == 3
    assert large_store.query('doc_id == "big"', ["id"]) == []
    assert [doc.doc_id for doc in large_store.documents()] == ["small"]


# -- retries and rejected writes -------------------------------------------------


def _failing(errors: list[Exception]):
    calls = []

    def call():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return call, calls


def test_retry_call_retries_transient_errors(caplog):
    from pymilvus.exceptions import MilvusUnavailableException

    call, calls = _failing(
        [MilvusUnavailableException(message="server restarting")] * 2
    )
    with caplog.at_level("WARNING", logger="semsearch.store"):
        result = retry_call("upsert", call, first_delay=0)
    assert result == "done"
    assert len(calls) == 3
    assert len(caplog.records) == 2
    assert "server restarting" in caplog.records[0].getMessage()


def test_retry_call_gives_up_after_attempts():
    from pymilvus.exceptions import MilvusException

    error = MilvusException(message="busy", retriable=True)
    call, calls = _failing([error] * 10)
    with pytest.raises(MilvusException, match="busy"):
        retry_call("upsert", call, attempts=3, first_delay=0)
    assert len(calls) == 3


def test_retry_call_rejection_not_retried():
    from pymilvus.exceptions import DataNotMatchException

    call, calls = _failing([DataNotMatchException(message="wrong field")])
    with pytest.raises(DataNotMatchException):
        retry_call("upsert", call, first_delay=0)
    assert len(calls) == 1


def test_retry_call_backoff_doubles_to_cap():
    from pymilvus.exceptions import ConnectError

    delays: list[float] = []
    call, _ = _failing([ConnectError(message="refused")] * 5)
    retry_call(
        "query", call, attempts=6, first_delay=1, max_delay=4, sleep=delays.append
    )
    assert delays == [1, 2, 4, 4, 4]


def test_ingest_rejected_document_reported_rest_written(tmp_path, encoder, monkeypatch):
    """The backend rejects rows whose text exceeds the field's max length."""
    with SemanticSearch(uri=str(tmp_path / "reject.db"), encoder=encoder) as engine:
        monkeypatch.setattr(store_module, "TEXT_MAX_BYTES", 60)
        engine.store.ensure_collection(encoder.fingerprint)
        monkeypatch.undo()
        corpus = tmp_path / "corpus"
        _write(corpus / "short.txt", "Short note on buoys.")
        _write(corpus / "long.txt", "A long account of a storm. " * 8)
        _write(corpus / "tiny.txt", "Tides rise.")
        report = engine.ingest([corpus])
        remaining = _sources(engine)
        again = engine.ingest([corpus])
    assert [skipped.source for skipped in report.skipped] == ["long.txt"]
    assert "'long.txt' was not written" in report.skipped[0].reason
    assert remaining == ["short.txt", "tiny.txt"]
    assert again.new == 1
    assert again.unchanged == 2


def test_store_error_marks_rejection_not_retryable(tmp_path, monkeypatch):
    with MilvusStore(str(tmp_path / "r.db"), "r") as store:
        monkeypatch.setattr(store_module, "TEXT_MAX_BYTES", 10)
        store.ensure_collection({"model": "random-test-vectors", "dim": SMALL_DIM})
        monkeypatch.undo()
        rows = _random_rows("doc", 1, seed=3)
        rows[0]["text"] = "x" * 100
        with pytest.raises(StoreError) as raised:
            store.upsert(rows)
    assert not raised.value.retryable


def test_migrate_json_reports_count_mismatch(tmp_path, encoder):
    """A target that already contains other rows ends with more rows than the source."""
    source = _lite_source(tmp_path, encoder)
    source.close()
    target_uri = str(tmp_path / "target.db")
    extra = tmp_path / "extra"
    _write(extra / "other.txt", PARAGRAPHS[-1])
    with SemanticSearch(uri=target_uri, collection="copy", encoder=encoder) as engine:
        extra_rows = engine.ingest([extra]).chunks
    assert extra_rows >= 1

    result = CliRunner().invoke(
        main,
        ["--uri", source.uri, "migrate", "--to", target_uri, "--to-collection",
         "copy", "--json"],
    )
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["target_rows"] == payload["rows"] + extra_rows
    assert payload["copied"] == payload["rows"]
    assert "row counts differ" in payload["error"]
    assert "row counts differ" in result.stderr
