"""The HTTP API on the real model and Milvus Lite.

Most tests call the app in process through Starlette's test client; one runs it
with uvicorn on a loopback socket. A backend that is down is a loopback listener
that closes every connection at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="the server tests need semsearch[server]")
pytest.importorskip("httpx", reason="the server tests need httpx")

import httpx
import uvicorn
from fastapi.testclient import TestClient

from semsearch import SemanticSearch
from semsearch.server import QueryBatcher, SearchBatcher, create_app
from tests.rag_corpus import DATABASE_QUESTION, RECORDS

API_KEY = "test-key-5f2c9a"


@pytest.fixture(scope="module")
def corpus_db(tmp_path_factory, encoder):
    uri = str(tmp_path_factory.mktemp("server") / "corpus.db")
    with SemanticSearch(uri=uri, collection="corpus", encoder=encoder) as engine:
        engine.ingest_records(RECORDS)
    return {"uri": uri, "collection": "corpus"}


@pytest.fixture(scope="module")
def engine(corpus_db, encoder):
    with SemanticSearch(**corpus_db, encoder=encoder) as engine:
        yield engine


@pytest.fixture(scope="module")
def client(engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as client:
        yield client


@pytest.fixture()
def writable_client(tmp_path, encoder) -> Iterator[TestClient]:
    """A client over its own collection, for tests that ingest and delete."""
    with SemanticSearch(
        uri=str(tmp_path / "w.db"), collection="w", encoder=encoder
    ) as engine:
        engine.ingest_records(RECORDS)
        with TestClient(create_app(engine)) as client:
            yield client


@pytest.fixture()
def closing_listener() -> Iterator[int]:
    """Port of a loopback listener that closes each connection: a dead backend."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def accept_and_close() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(timeout=5)


def _ids(hits: list[dict]) -> list[str]:
    return [hit["id"] for hit in hits]


# -- search ------------------------------------------------------------------


def test_search_returns_hit_dicts(client, engine):
    response = client.post("/search", json={"query": DATABASE_QUESTION, "k": 3})
    expected = [hit.to_dict() for hit in engine.search(DATABASE_QUESTION, k=3)]
    assert response.status_code == 200
    assert _ids(response.json()["hits"]) == _ids(expected)
    assert response.json()["hits"][0].keys() == expected[0].keys()


def test_search_where_and_filter(client):
    response = client.post(
        "/search",
        json={
            "query": "programming",
            "k": 10,
            "where": {"category": "languages"},
            "filter": 'metadata["year"] >= 2015',
        },
    )
    hits = response.json()["hits"]
    assert response.status_code == 200
    assert {hit["doc_id"] for hit in hits} == {"rust-ownership", "rust-channels"}


def test_search_min_score(client):
    response = client.post(
        "/search", json={"query": DATABASE_QUESTION, "k": 6, "min_score": 0.3}
    )
    scores = [hit["score"] for hit in response.json()["hits"]]
    assert scores
    assert min(scores) >= 0.3


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_search_modes(client, mode):
    response = client.post(
        "/search", json={"query": "rollback journal power failure", "mode": mode}
    )
    assert response.status_code == 200
    assert response.json()["hits"][0]["doc_id"] == "sqlite-journal"


def test_search_batch(client, engine):
    queries = [DATABASE_QUESTION, "sleepy animals"]
    response = client.post("/search/batch", json={"queries": queries, "k": 2})
    expected = engine.search_many(queries, k=2)
    results = response.json()["results"]
    assert response.status_code == 200
    assert [_ids(hits) for hits in results] == [
        [hit.id for hit in hits] for hits in expected
    ]


def test_search_bad_filter_is_400(client):
    response = client.post("/search", json={"query": "x", "filter": "doc_id =="})
    assert response.status_code == 400
    assert "invalid filter expression" in response.json()["error"]


def test_search_bad_where_key_is_400(client):
    response = client.post("/search", json={"query": "x", "where": {"a b": 1}})
    assert response.status_code == 400
    assert "invalid filter key 'a b'" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 1001}, "k"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"k": 3}, "query"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "limit": 3}, "limit"),
        ({"query": "x", "where": {"year": [1, 2]}}, "where"),
    ],
)
def test_search_invalid_input_is_422(client, body, field):
    response = client.post("/search", json=body)
    assert response.status_code == 422
    assert f"{field}" in response.json()["error"]


def test_search_batch_empty_is_422(client):
    response = client.post("/search/batch", json={"queries": []})
    assert response.status_code == 422
    assert "queries" in response.json()["error"]


def test_search_malformed_json_is_400(client):
    response = client.post(
        "/search",
        content=b'{"query": "x", ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid JSON in the request body; send a JSON object"
    }


def test_search_missing_collection_is_404(tmp_path, encoder):
    with (
        SemanticSearch(uri=str(tmp_path / "e.db"), encoder=encoder) as engine,
        TestClient(create_app(engine)) as client,
    ):
        search = client.post("/search", json={"query": "x"})
        stats = client.get("/stats")
    assert search.status_code == 404
    assert "collection 'semsearch' not found" in search.json()["error"]
    assert stats.status_code == 404


def test_search_backend_down_is_503(closing_listener, encoder):
    uri = f"http://127.0.0.1:{closing_listener}"
    with (
        SemanticSearch(uri=uri, encoder=encoder) as engine,
        TestClient(create_app(engine)) as client,
    ):
        search = client.post("/search", json={"query": "x"})
        health = client.get("/healthz")
    assert search.status_code == 503
    assert "cannot connect to Milvus" in search.json()["error"]
    assert health.status_code == 503


def test_unknown_path_is_404_json(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


# -- micro-batching ----------------------------------------------------------


def test_query_batcher_one_encoder_call(encoder):
    queries = [f"question number {i}" for i in range(10)]
    batcher = QueryBatcher(encoder.encode_queries)

    async def embed_all():
        return await asyncio.gather(*(batcher.submit(q) for q in queries))

    vectors = asyncio.run(embed_all())
    expected = encoder.encode_queries(queries)
    assert batcher.calls == 1
    for index, vector in enumerate(vectors):
        assert vector == pytest.approx(expected[index], abs=1e-5)


def test_query_batcher_max_batch(encoder):
    batcher = QueryBatcher(encoder.encode_queries, max_batch=4)

    async def embed_all():
        return await asyncio.gather(*(batcher.submit(f"q {i}") for i in range(10)))

    asyncio.run(embed_all())
    assert batcher.calls == 3


def test_search_batcher_groups_by_options(engine):
    batcher = SearchBatcher(engine)
    same = {"k": 2, "filter": None, "where": None, "mode": "dense", "min_score": None}
    other = {**same, "where": {"category": "languages"}}
    questions = [DATABASE_QUESTION, "cats", "moon", "ownership"]

    async def search_all():
        return await asyncio.gather(
            *(batcher.search(q, same) for q in questions),
            batcher.search("ownership", other),
        )

    results = asyncio.run(search_all())
    for question, hits in zip(questions, results, strict=False):
        assert [hit.id for hit in hits] == [
            hit.id for hit in engine.search(question, k=2)
        ]
    assert {hit.doc_id for hit in results[-1]} <= {"rust-ownership", "rust-channels"}
    assert batcher.calls == 2


@pytest.mark.parametrize("micro_batching", [True, False])
def test_search_concurrent_requests(engine, micro_batching):
    questions = [DATABASE_QUESTION, "value owner in Rust", "moon", "cats"] * 4
    expected = {q: [hit.id for hit in engine.search(q, k=3)] for q in questions}
    app = create_app(engine, micro_batching=micro_batching)

    async def search_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            requests = (c.post("/search", json={"query": q, "k": 3}) for q in questions)
            return await asyncio.gather(*requests)

    responses = asyncio.run(search_all())
    for question, response in zip(questions, responses, strict=True):
        assert response.status_code == 200
        assert _ids(response.json()["hits"]) == expected[question], question


# -- documents ---------------------------------------------------------------


def test_documents_ingest_then_search(writable_client):
    body = {
        "documents": [
            {
                "text": "Octopuses have three hearts and blue blood.",
                "id": "octopus",
                "title": "Octopus facts",
                "metadata": {"category": "animals"},
            },
            {"text": "Bees communicate the location of flowers by dancing."},
        ]
    }
    report = writable_client.post("/documents", json=body)
    search = writable_client.post(
        "/search", json={"query": "animal with three hearts", "k": 1}
    )
    assert report.status_code == 200
    assert report.json()["new"] == 2
    assert report.json()["skipped"] == []
    assert search.json()["hits"][0]["doc_id"] == "octopus"
    assert search.json()["hits"][0]["title"] == "Octopus facts"


def test_documents_rerun_unchanged(writable_client):
    response = writable_client.post("/documents", json={"documents": RECORDS[:2]})
    assert response.json()["unchanged"] == 2
    assert response.json()["chunks"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"documents": []},
        {"documents": [{"text": ""}]},
        {"documents": [{"title": "no text"}]},
        {"documents": [{"text": "x", "metadata": "not a dict"}]},
        {"records": [{"text": "x"}]},
    ],
)
def test_documents_invalid_is_422(writable_client, body):
    response = writable_client.post("/documents", json=body)
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid request: ")


def test_documents_delete_by_ids(writable_client):
    response = writable_client.request(
        "DELETE", "/documents", json={"ids": ["cats", "apollo"]}
    )
    stats = writable_client.get("/stats").json()
    assert response.status_code == 200
    assert response.json() == {"deleted": 2}
    assert stats["documents"] == len(RECORDS) - 2


def test_documents_delete_by_source_and_filter(writable_client):
    response = writable_client.request(
        "DELETE",
        "/documents",
        json={"source": "notes/sqlite.md", "filter": 'metadata["year"] > 2005'},
    )
    assert response.json() == {"deleted": 1}


def test_documents_delete_bad_filter_is_400(writable_client):
    response = writable_client.request(
        "DELETE", "/documents", json={"filter": "year >"}
    )
    assert response.status_code == 400
    assert "invalid filter expression" in response.json()["error"]


def test_documents_delete_without_condition_is_422(writable_client):
    response = writable_client.request("DELETE", "/documents", json={})
    assert response.status_code == 422
    assert "ids, source or filter" in response.json()["error"]


# -- stats, health, schema ---------------------------------------------------


def test_stats(client):
    response = client.get("/stats")
    body = response.json()
    assert response.status_code == 200
    assert body["collection"] == "corpus"
    assert body["documents"] == len(RECORDS)
    assert body["model"]["dim"] == 384


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_schema_paths(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) >= {
        "/search",
        "/search/batch",
        "/documents",
        "/stats",
        "/healthz",
    }
    search_request = schema["components"]["schemas"]["SearchRequest"]
    assert search_request["properties"]["k"]["maximum"] == 1000


# -- authentication and logging ----------------------------------------------


@pytest.fixture(scope="module")
def secured_client(engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, api_key=API_KEY)) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_auth_rejects_without_key(secured_client, headers):
    response = secured_client.post("/search", json={"query": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["error"]


def test_auth_rejects_before_parsing(secured_client):
    response = secured_client.post(
        "/search", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


def test_auth_accepts_bearer_key(secured_client):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    search = secured_client.post("/search", json={"query": "x"}, headers=headers)
    stats = secured_client.get("/stats", headers=headers)
    assert search.status_code == 200
    assert stats.status_code == 200


def test_auth_leaves_healthz_open(secured_client):
    assert secured_client.get("/healthz").status_code == 200


def test_auth_off_without_key(client):
    assert client.get("/stats").status_code == 200


def test_request_log_line(secured_client, caplog):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with caplog.at_level(logging.INFO, logger="semsearch.server"):
        secured_client.post("/search", json={"query": "x"}, headers=headers)
        secured_client.post("/search", json={"query": "x"})
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("POST /search 200 ") for line in lines), lines
    assert any(line.startswith("POST /search 401 ") for line in lines), lines
    assert API_KEY not in caplog.text


# -- a real socket -----------------------------------------------------------


def test_uvicorn_on_loopback(engine):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(engine), log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/healthz", timeout=30)
        search = httpx.post(
            f"{base}/search", json={"query": DATABASE_QUESTION, "k": 1}, timeout=30
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
    assert health.status_code == 200
    assert search.json()["hits"][0]["doc_id"] == "sqlite-journal"
    assert not thread.is_alive()


def test_serve_command_help():
    from click.testing import CliRunner

    from semsearch.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "SEMSEARCH_API_KEY" in result.output
    assert "--no-micro-batching" in result.output


def test_serve_locked_lite_file_exits(tmp_path):
    """`serve` on a Milvus Lite file held by another process stops at once."""
    import os
    import subprocess
    import sys

    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pymilvus import MilvusClient\n"
            f"MilvusClient({str(db)!r}).list_collections()\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = subprocess.run(
            [sys.executable, "-m", "semsearch.cli", "--uri", str(db), "serve", "--port", "8765"],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert "open in another process" in result.stderr
    assert "Traceback" not in result.stderr
