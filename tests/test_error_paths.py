"""Invalid input is rejected with the right error type, message and exit status.

Runs on the real bundled model and Milvus Lite files under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from semsearch import (
    CollectionNotFoundError,
    ConfigError,
    FilterError,
    SemanticSearch,
    StoreError,
)
from semsearch.cli import main
from semsearch.errors import ModelMismatchError
from semsearch.filters import equality
from semsearch.store import MilvusStore, redact_uri
from tests.rag_corpus import RECORDS


@pytest.fixture(scope="module")
def corpus_db(tmp_path_factory, encoder):
    """A Milvus Lite file holding RECORDS; tests here only read it."""
    uri = str(tmp_path_factory.mktemp("errors") / "corpus.db")
    with SemanticSearch(uri=uri, collection="corpus", encoder=encoder) as engine:
        engine.ingest_records(RECORDS)
    return uri


@pytest.fixture()
def engine(corpus_db, encoder):
    with SemanticSearch(uri=corpus_db, collection="corpus", encoder=encoder) as engine:
        yield engine


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


# -- index parameters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("index_type", "params", "expected"),
    [
        ("HNSW", {"M": -5}, r"M -5: it must be in \[2, 2048\]"),
        ("HNSW", {"M": 4096}, r"M 4096: it must be in \[2, 2048\]"),
        ("HNSW", {"efConstruction": 0}, r"efConstruction 0: it must be in \[1, "),
        ("HNSW", {"M": "16"}, r"M '16': use an integer in \[2, 2048\]"),
        ("HNSW", {"M": 16.5}, r"M 16.5: use an integer"),
        ("HNSW", {"m": 16}, r"unknown HNSW index parameter 'm'"),
        ("IVF_FLAT", {"nlist": 0}, r"nlist 0: it must be in \[1, 65536\]"),
        ("IVF_FLAT", {"nlist": 70000}, r"nlist 70000: it must be in \[1, 65536\]"),
        ("IVF_FLAT", {"nlist": 8, "nprobe": 9}, r"nprobe 9: .*\[1, 8\]"),
        ("IVF_SQ8", {"nlist": True}, r"nlist True: use an integer"),
    ],
)
def test_lite_index_params_rejected(tmp_path, index_type, params, expected):
    store = MilvusStore(
        str(tmp_path / "index.db"), "c", index_type=index_type, index_params=params
    )
    with pytest.raises(ConfigError, match=expected):
        store.vector_index()


def test_lite_index_params_in_range_accepted(tmp_path):
    store = MilvusStore(
        str(tmp_path / "index.db"),
        "c",
        index_type="IVF_FLAT",
        index_params={"nlist": 16, "nprobe": 16},
    )
    assert store.vector_index() == ("IVF_FLAT", {"nlist": 16, "nprobe": 16})


def test_invalid_nlist_creates_no_collection(tmp_path, encoder):
    uri = str(tmp_path / "index.db")
    with MilvusStore(
        uri, "c", index_type="IVF_FLAT", index_params={"nlist": 0}
    ) as store:
        with pytest.raises(ConfigError, match="nlist 0"):
            store.ensure_collection(encoder.fingerprint)
        assert not store.exists()


# -- --where on schema columns -------------------------------------------------


def test_where_integer_column_numeric_only():
    assert equality("ordinal", "3") == "ordinal == 3"
    assert equality("char_start", 12) == "char_start == 12"


def test_where_varchar_column_string_only():
    assert equality("title", "3") == 'title == "3"'


def test_where_integer_column_rejects_text():
    with pytest.raises(FilterError, match=r"'x' for ordinal"):
        equality("ordinal", "x")
    with pytest.raises(FilterError, match=r"1.5 for chunk_count"):
        equality("chunk_count", 1.5)


def test_where_ordinal_searches(engine):
    hits = engine.search("database transactions", k=5, where={"ordinal": "0"})
    assert hits
    assert all(hit.chunk == 0 for hit in hits)


# -- filters the backend rejects -----------------------------------------------


def test_unknown_function_is_filter_error(engine):
    with pytest.raises(FilterError) as caught:
        engine.search("database", k=3, filter="bad(((")
    message = str(caught.value)
    assert "invalid filter expression 'bad((('" in message
    assert "unknown function 'bad'" in message
    assert "check the Milvus boolean expression syntax" in message


def test_type_mismatch_is_filter_error(engine):
    with pytest.raises(FilterError, match="invalid filter expression 'ordinal == \"a\"'"):
        engine.search("database", k=3, filter='ordinal == "a"')


def test_delete_bad_filter_is_filter_error(engine):
    with pytest.raises(FilterError, match="invalid filter expression 'bad\\(x\\)'"):
        engine.delete(filter="bad(x)")


def test_unreachable_server_stays_store_error():
    with MilvusStore("http://127.0.0.1:1", "c") as store:
        with pytest.raises(StoreError) as caught:
            store.search([[0.0] * 384], 3, "ordinal == 0")
    assert not isinstance(caught.value, FilterError)


def test_cli_bad_filter_one_line(corpus_db):
    result = _cli(
        "--uri", corpus_db, "-c", "corpus", "search", "database", "--filter", "bad((("
    )
    assert result.returncode == 1
    assert "Error: invalid filter expression 'bad((('" in result.stderr
    assert "Traceback" not in result.stderr
    assert "_log_rpc_error" not in result.stderr


# -- model mismatch advice -----------------------------------------------------


def test_mismatch_precision_names_precision(corpus_db, encoder):
    with MilvusStore(corpus_db, "corpus") as store:
        with pytest.raises(ModelMismatchError) as caught:
            store.check_fingerprint(dict(encoder.fingerprint, precision="int8"))
    message = str(caught.value)
    assert "Use the same --precision" in message
    assert "--model" not in message


def test_mismatch_model_names_model(corpus_db, encoder):
    with MilvusStore(corpus_db, "corpus") as store:
        with pytest.raises(ModelMismatchError) as caught:
            store.check_fingerprint(dict(encoder.fingerprint, model="other/model"))
    assert "Use the same --model" in str(caught.value)


def test_mismatch_prefix_names_prefix(corpus_db, encoder):
    with MilvusStore(corpus_db, "corpus") as store:
        with pytest.raises(ModelMismatchError) as caught:
            store.check_fingerprint(dict(encoder.fingerprint, query_prefix="query: "))
    message = str(caught.value)
    assert "query prefix" in message
    assert "--model" not in message


# -- command-line usage errors -------------------------------------------------


def test_where_without_equals_usage_error(tmp_path):
    result = CliRunner().invoke(
        main, ["--uri", str(tmp_path / "x.db"), "search", "x", "--where", "year"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--where'" in result.output
    assert not (tmp_path / "x.db").exists()


def test_index_params_bad_json_usage_error(tmp_path):
    result = CliRunner().invoke(
        main, ["--uri", str(tmp_path / "x.db"), "--index-params", "{M", "stats"]
    )
    assert result.exit_code == 2
    assert "--index-params" in result.output


def test_min_score_help_names_scores():
    result = CliRunner().invoke(main, ["search", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "cosine similarity in dense mode" in help_text
    assert "[0, 1] in hybrid mode" in help_text
    assert "raw BM25 score in bm25 mode" in help_text


# -- credentials in URIs -------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://root:SECRET@127.0.0.1:19530", "http://root:***@127.0.0.1:19530"),
        ("https://u:p@w@host:443/db?x=1", "https://u:***@host:443/db?x=1"),
        ("http://root@127.0.0.1:19530", "http://root@127.0.0.1:19530"),
        ("http://127.0.0.1:19530", "http://127.0.0.1:19530"),
        ("./semsearch.db", "./semsearch.db"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_connect_error_hides_password():
    store = MilvusStore("http://root:SECRET@127.0.0.1:1", "c")
    with pytest.raises(StoreError) as caught:
        store.exists()
    assert "SECRET" not in str(caught.value)
    assert "root:***@127.0.0.1:1" in str(caught.value)
    assert "SECRET" not in repr(store)


# -- read-only commands on a missing Lite file -----------------------------------


@pytest.mark.parametrize("operation", ["stats", "sources", "search"])
def test_missing_lite_file_not_created(tmp_path, encoder, operation):
    path = tmp_path / "missing.db"
    with SemanticSearch(uri=str(path), encoder=encoder) as engine:
        with pytest.raises(CollectionNotFoundError, match="missing.db"):
            if operation == "search":
                engine.search("anything")
            else:
                getattr(engine, operation)()
    assert not path.exists()


# -- empty queries ---------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query_rejected(engine, query):
    with pytest.raises(ConfigError, match="query is empty"):
        engine.search(query)


def test_empty_query_in_batch_rejected(engine):
    with pytest.raises(ConfigError, match="query is empty"):
        engine.search_many(["database", ""])


def test_cli_empty_query_exits_1(corpus_db):
    result = _cli("--uri", corpus_db, "-c", "corpus", "search", "")
    assert result.returncode == 1
    assert "query is empty" in result.stderr


def test_cli_migrate_quiet_without_verbose(corpus_db, tmp_path: Path):
    target = str(tmp_path / "target.db")
    result = _cli("--uri", corpus_db, "-c", "corpus", "migrate", "--to", target)
    assert result.returncode == 0, result.stderr
    assert "[WARNING]" not in result.stderr
