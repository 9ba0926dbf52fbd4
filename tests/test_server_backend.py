"""The same code on Milvus Lite and a Milvus 2.3.5 server: capabilities, index
choice, migration between backends, tokens kept out of output, and a Lite file
held by another process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from semsearch import SemanticSearch
from semsearch.errors import (
    ConfigError,
    FeatureUnavailableError,
    ModelMismatchError,
)
from semsearch.settings import Settings
from semsearch.store import MilvusStore

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_INCLUDE = ["md/rust-book-ch04*", "md/rust-book-ch08*"]
SECRET = "sEcReT-tOkEn-7319"

QUERIES = [
    "What happens to a String when ownership moves to another variable?",
    "rules for mutable references and borrowing",
    "storing keys with associated values in a hash map",
    "slices of a string",
    "growing a vector with push",
    "iterating over the values in a vector",
    "UTF-8 encoded text in strings",
    "dangling references",
    "the stack and the heap",
    "updating a value based on the old value",
]


def _cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 600):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("SEMSEARCH_TOKEN", None)
    env.pop("SEMSEARCH_TO_TOKEN", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "semsearch.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _index_param(index: dict, name: str) -> int:
    """Read a build parameter from describe_index, flat (server) or nested (Lite)."""
    if name in index:
        return int(index[name])
    return int(index["params"][name])


def _drop(uri: str, collection: str) -> None:
    with MilvusStore(uri, collection) as store:
        store.drop()


@pytest.fixture(scope="module")
def lite_source(tmp_path_factory, encoder):
    """A Milvus Lite collection with a few Rust book chapters."""
    uri = str(tmp_path_factory.mktemp("source") / "source.db")
    with SemanticSearch(uri=uri, collection="rust", encoder=encoder) as engine:
        report = engine.ingest([SAMPLES], include=SAMPLE_INCLUDE)
    assert report.documents >= 4
    return {"uri": uri, "collection": "rust"}


@pytest.fixture(scope="module")
def migrated(lite_source, encoder, request):
    """The Lite collection migrated to the test server, and the migration report."""
    server_uri = request.getfixturevalue("milvus_server_uri")
    collection = f"mig_{uuid.uuid4().hex[:10]}"
    with SemanticSearch(**lite_source, encoder=encoder) as engine:
        report = engine.migrate_to(server_uri, collection, batch_size=40)
    yield {"uri": server_uri, "collection": collection, "report": report}
    _drop(server_uri, collection)


# -- capabilities --------------------------------------------------------------


def test_capabilities_lite(lite_uri):
    with MilvusStore(lite_uri, "caps") as store:
        capabilities = store.capabilities()
        leftover = store.client.list_collections()
    assert capabilities.lite is True
    assert capabilities.bm25 is True
    assert capabilities.group_by is True
    assert {"FLAT", "HNSW", "IVF_FLAT"} <= set(capabilities.index_types)
    assert "IVF_PQ" not in capabilities.index_types
    assert capabilities.server_version.startswith("milvus_lite")
    assert leftover == []


@pytest.mark.server
def test_capabilities_server(milvus_server_uri):
    with MilvusStore(milvus_server_uri, "caps") as store:
        capabilities = store.capabilities()
        leftover = [n for n in store.client.list_collections() if "probe" in n]
    assert capabilities.lite is False
    assert capabilities.bm25 is False
    assert capabilities.group_by is False
    assert "2.3" in capabilities.server_version
    assert "HNSW" in capabilities.index_types
    assert leftover == []


@pytest.mark.server
def test_server_ignores_group_by_field(migrated):
    # The reason for the client-side fallback: Milvus 2.3 returns ungrouped hits.
    with MilvusStore(migrated["uri"], migrated["collection"]) as store:
        store.require()
        vector = store.vectors([store.query("ordinal == 0", ["id"])[0]["id"]])
        found = store.client.search(
            migrated["collection"],
            data=list(vector.values()),
            limit=10,
            group_by_field="doc_id",
            output_fields=["doc_id"],
        )[0]
    doc_ids = [hit["entity"]["doc_id"] for hit in found]
    assert len(set(doc_ids)) < len(doc_ids)


@pytest.mark.server
def test_search_group_by_doc_server(migrated, encoder):
    with SemanticSearch(
        uri=migrated["uri"], collection=migrated["collection"], encoder=encoder
    ) as engine:
        hits = engine.search("ownership and borrowing", k=4, group_by_doc=True)
    doc_ids = [hit.doc_id for hit in hits]
    assert len(doc_ids) == 4
    assert len(set(doc_ids)) == 4


@pytest.mark.server
def test_bm25_on_server_error(migrated, encoder):
    with SemanticSearch(
        uri=migrated["uri"], collection=migrated["collection"], encoder=encoder
    ) as engine:
        with pytest.raises(FeatureUnavailableError, match="Milvus 2.5") as raised:
            engine.search("hash map", mode="bm25")
    assert "BM25 full-text search" in str(raised.value)
    assert "v2.3" in str(raised.value)


@pytest.mark.server
def test_cli_bm25_on_server_message(migrated):
    result = _cli(
        "--uri", migrated["uri"], "--collection", migrated["collection"],
        "search", "hash map", "--mode", "bm25",
    )
    assert result.returncode == 1
    assert "BM25 full-text search needs Milvus 2.5" in result.stderr
    assert "Traceback" not in result.stderr


# -- index choice --------------------------------------------------------------


def test_index_default_lite_flat(lite_uri, encoder):
    with MilvusStore(lite_uri, "idx") as store:
        store.ensure_collection(encoder.fingerprint)
        index = store.index_description()
    assert index["index_type"] == "FLAT"


@pytest.fixture()
def server_collection(milvus_server_uri):
    """A unique collection name on the test server, dropped afterwards."""
    collection = f"t_{uuid.uuid4().hex[:12]}"
    yield {"uri": milvus_server_uri, "collection": collection}
    _drop(milvus_server_uri, collection)


@pytest.mark.server
def test_index_default_server_hnsw(server_collection, encoder):
    with MilvusStore(**server_collection) as store:
        store.ensure_collection(encoder.fingerprint)
        index = store.index_description()
    assert index["index_type"] == "HNSW"
    assert _index_param(index, "M") == 16
    assert _index_param(index, "efConstruction") == 200


def test_index_override_applied(backend, encoder):
    with SemanticSearch(
        **backend, encoder=encoder, index_type="IVF_FLAT", index_params={"nlist": 8}
    ) as engine:
        engine.store.ensure_collection(encoder.fingerprint)
        index = engine.store.index_description()
    assert index["index_type"] == "IVF_FLAT"
    assert _index_param(index, "nlist") == 8


def test_index_rejected_names_type(backend, encoder):
    with MilvusStore(**backend, index_type="NO_SUCH_INDEX") as store:
        with pytest.raises(ConfigError, match="NO_SUCH_INDEX") as raised:
            store.ensure_collection(encoder.fingerprint)
        exists = store.exists()
    assert "Accepted index types" in str(raised.value)
    assert "HNSW" in str(raised.value)
    assert exists is False


@pytest.mark.server
def test_index_rejected_params_server(server_collection, encoder):
    with MilvusStore(
        **server_collection, index_type="IVF_FLAT", index_params={"nlist": 0}
    ) as store:
        with pytest.raises(ConfigError, match="nlist") as raised:
            store.ensure_collection(encoder.fingerprint)
        exists = store.exists()
    assert "IVF_FLAT" in str(raised.value)
    assert exists is False


def test_cli_index_type_option(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "cats.txt").write_text("Cats purr when content.", encoding="utf-8")
    db = str(tmp_path / "cli.db")
    result = _cli(
        "--uri", db, "--index-type", "HNSW", "--index-params", '{"M": 8}',
        "ingest", str(corpus),
    )
    assert result.returncode == 0, result.stderr
    with MilvusStore(db, "semsearch") as store:
        index = store.index_description()
    assert index["index_type"] == "HNSW"
    assert _index_param(index, "M") == 8


def test_cli_index_params_invalid_json(tmp_path):
    result = _cli("--uri", str(tmp_path / "x.db"), "--index-params", "{M: 8}", "stats")
    assert result.returncode == 2
    assert "{M: 8}" in result.stderr


# -- migration -----------------------------------------------------------------


@pytest.mark.server
def test_migrate_keeps_row_count(migrated, lite_source):
    with MilvusStore(**lite_source) as source, MilvusStore(
        migrated["uri"], migrated["collection"]
    ) as target:
        source.require()
        target.require()
        source_rows = source.count()
        target_rows = target.count()
    assert migrated["report"].rows == source_rows
    assert target_rows == source_rows
    assert migrated["report"].bm25 is False


@pytest.mark.server
def test_migrate_rows_identical(migrated, lite_source):
    fields = ["id", "vector", "text", "doc_id", "ordinal", "chunk_count",
              "char_start", "char_end", "source", "title", "doc_hash", "metadata"]
    with MilvusStore(**lite_source) as source, MilvusStore(
        migrated["uri"], migrated["collection"]
    ) as target:
        source.require()
        target.require()
        sample = source.query("ordinal < 3", fields)
        ids = ", ".join(json.dumps(row["id"]) for row in sample)
        copied = {row["id"]: row for row in target.query(f"id in [{ids}]", fields)}
        source_fingerprint = source.fingerprint()
        target_fingerprint = target.fingerprint()
    assert len(sample) >= 10
    assert set(copied) == {row["id"] for row in sample}
    for row in sample:
        other = copied[row["id"]]
        for name in fields:
            if name == "vector":
                assert list(map(float, other[name])) == list(map(float, row[name])), row["id"]
            else:
                assert other[name] == row[name], (row["id"], name)
    assert target_fingerprint == source_fingerprint


def _same_ranking(first, second) -> bool:
    """Return True for the same ids in the same order, up to equal-score swaps."""
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if a.id != b.id and abs(a.score - b.score) > 1e-5:
            return False
    return {h.id for h in first} == {h.id for h in second}


@pytest.mark.server
def test_migrate_same_top10(migrated, lite_source, encoder):
    with SemanticSearch(**lite_source, encoder=encoder) as source, SemanticSearch(
        uri=migrated["uri"], collection=migrated["collection"], encoder=encoder
    ) as target:
        before = source.search_many(QUERIES, k=10)
        after = target.search_many(QUERIES, k=10)
    for query, expected, found in zip(QUERIES, before, after):
        assert _same_ranking(expected, found), (
            query, [h.id for h in expected], [h.id for h in found]
        )


@pytest.mark.server
def test_migrate_rerun_idempotent(migrated, lite_source, encoder):
    with SemanticSearch(**lite_source, encoder=encoder) as engine:
        report = engine.migrate_to(migrated["uri"], migrated["collection"])
    assert report.copied == migrated["report"].rows
    assert report.target_rows == migrated["report"].rows


@pytest.mark.server
def test_migrate_server_to_lite_recomputes_bm25(migrated, tmp_path, encoder):
    target_uri = str(tmp_path / "back.db")
    with SemanticSearch(
        uri=migrated["uri"], collection=migrated["collection"], encoder=encoder
    ) as engine:
        report = engine.migrate_to(target_uri, "back")
    with SemanticSearch(uri=target_uri, collection="back", encoder=encoder) as engine:
        hits = engine.search("hash map keys and values", k=3, mode="bm25")
    assert report.bm25 is True
    assert report.target_rows == migrated["report"].rows
    assert "hash-maps" in hits[0].source


def test_migrate_into_other_model_fails(lite_source, tmp_path, encoder):
    target_uri = str(tmp_path / "other.db")
    other = dict(
        encoder.fingerprint, model="intfloat/e5-small-v2", weights_sha256="0" * 64
    )
    with MilvusStore(target_uri, "rust") as target:
        target.ensure_collection(other)
    with SemanticSearch(**lite_source, encoder=encoder) as engine:
        with pytest.raises(ModelMismatchError, match="e5-small-v2"):
            engine.migrate_to(target_uri)
    with MilvusStore(target_uri, "rust") as target:
        target.require()
        rows = target.count()
    assert rows == 0


def test_migrate_same_collection_rejected(lite_source, encoder):
    with SemanticSearch(**lite_source, encoder=encoder) as engine:
        with pytest.raises(ConfigError, match="same collection"):
            engine.migrate_to(lite_source["uri"])


def test_migrate_missing_source(tmp_path, encoder):
    from semsearch.errors import CollectionNotFoundError

    with SemanticSearch(uri=str(tmp_path / "a.db"), collection="none", encoder=encoder) as engine:
        with pytest.raises(CollectionNotFoundError, match="none"):
            engine.migrate_to(str(tmp_path / "b.db"))


def test_cli_migrate_lite_to_lite_json(lite_source, tmp_path):
    target = str(tmp_path / "copy.db")
    result = _cli(
        "--uri", lite_source["uri"], "--collection", lite_source["collection"],
        "migrate", "--to", target, "--to-collection", "copy", "--batch-size", "25",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["copied"] == report["rows"]
    assert report["target_rows"] == report["rows"]
    assert report["target_collection"] == "copy"


# -- a Milvus Lite file held by another process --------------------------------

HOLDER = """
import sys, time
from pymilvus import MilvusClient
client = MilvusClient(uri=sys.argv[1])
print("ready", flush=True)
time.sleep(300)
"""


def test_cli_lite_file_held_elsewhere(tmp_path):
    db = str(tmp_path / "held.db")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        # The timeout only keeps a hang from blocking the suite; it is no
        # speed check.
        result = _cli("--uri", db, "stats", timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert db in result.stderr
    assert "Milvus server" in result.stderr
    assert "Traceback" not in result.stderr


# -- tokens never printed ------------------------------------------------------


def test_settings_repr_hides_token():
    settings = Settings.resolve(environ={"SEMSEARCH_TOKEN": SECRET})
    assert settings.token == SECRET
    assert SECRET not in repr(settings)


def test_store_repr_hides_token(lite_uri):
    store = MilvusStore(lite_uri, "c", token=SECRET)
    assert SECRET not in repr(store)


def _write_tiny_beir(root: Path) -> Path:
    root.mkdir()
    docs = {"d1": "Lighthouses guide ships at night.", "d2": "Bees dance to share flowers."}
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id, text in docs.items():
            out.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "why do bees dance"}) + "\n", encoding="utf-8"
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td2\t1\n", encoding="utf-8"
    )
    return root


@pytest.mark.parametrize(
    "kind", ["lite", pytest.param("server", marks=pytest.mark.server)]
)
def test_cli_token_never_printed(kind, tmp_path, request):
    if kind == "lite":
        uri = str(tmp_path / "secret.db")
        collection = "secret"
    else:
        uri = request.getfixturevalue("milvus_server_uri")
        collection = f"tok_{uuid.uuid4().hex[:10]}"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "cats.txt").write_text("Cats purr when content.", encoding="utf-8")
    (corpus / "rockets.txt").write_text("Rockets burn propellant.", encoding="utf-8")
    beir = _write_tiny_beir(tmp_path / "beir")

    env = {"SEMSEARCH_TOKEN": SECRET, "SEMSEARCH_TO_TOKEN": SECRET}
    base = ["-vv", "--uri", uri, "--collection", collection]
    commands = {
        "ingest": (base + ["ingest", str(corpus)], 0),
        "search": (base + ["search", "purring", "--json"], 0),
        "search bad filter": (base + ["search", "x", "--filter", "source ==== ("], 1),
        "search missing collection": (
            ["-vv", "--uri", uri, "--collection", "no_such", "search", "x"],
            1,
        ),
        "similarity": (base + ["similarity", "a cat", "a kitten"], 0),
        "stats": (base + ["stats"], 0),
        "stats json": (base + ["stats", "--json"], 0),
        "sources": (base + ["sources"], 0),
        "delete": (base + ["delete", "--source", "cats.txt"], 0),
        "delete missing": (base + ["delete", "--source", "none.txt"], 1),
        "migrate": (
            base + ["migrate", "--to", str(tmp_path / "copy.db"), "--to-token", SECRET],
            0,
        ),
        # Re-embedding with the model already in use is an error path.
        "reindex": (base + ["reindex", "--to-collection", collection + "_r"], 1),
        "eval": (
            ["-vv", "--uri", uri, "--collection", collection + "_e", "eval", str(beir)],
            0,
        ),
    }

    outputs = []
    try:
        for name, (args, expected_rc) in commands.items():
            result = _cli(*args, env_extra=env)
            outputs.append((name, result))
            assert result.returncode == expected_rc, (name, result.stderr[-2000:])
    finally:
        if kind == "server":
            with MilvusStore(uri, collection) as store:
                for name in store.client.list_collections():
                    if name.startswith(collection):
                        store.client.drop_collection(name)

    for name, result in outputs:
        assert SECRET not in result.stdout, name
        assert SECRET not in result.stderr, name
    written = [
        path for path in tmp_path.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert written == []
