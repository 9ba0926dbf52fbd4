"""Shared fixtures: the real bundled model, Milvus Lite files and a Milvus server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "samples"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


pytest_plugins = ["tests.milvus_server"]


@pytest.fixture(scope="session")
def encoder():
    """The bundled all-MiniLM-L6-v2, loaded once for the whole session."""
    from semsearch.encoder import Encoder

    return Encoder(device="cpu")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture()
def lite_uri(tmp_path: Path) -> str:
    return str(tmp_path / "semsearch.db")


@pytest.fixture(
    params=["lite", pytest.param("server", marks=pytest.mark.server)],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Connection settings for a fresh collection on each backend.

    Lite gets its own file per test. The server is shared by the whole test run,
    so each test gets a collection with a unique name and drops it afterwards.
    """
    if request.param == "lite":
        yield {"uri": str(tmp_path / "semsearch.db"), "collection": "semsearch"}
        return
    uri = request.getfixturevalue("milvus_server_uri")
    collection = f"t_{uuid.uuid4().hex[:12]}"
    yield {"uri": uri, "collection": collection}
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        if client.has_collection(collection):
            client.drop_collection(collection)
    finally:
        client.close()
