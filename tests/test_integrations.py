"""The LangChain and LlamaIndex retrievers return the same hits as the engine."""

from __future__ import annotations

import asyncio

import pytest

from semsearch import SemanticSearch
from tests.rag_corpus import DATABASE_QUESTION, RECORDS

FILTERED = {
    "k": 3,
    "filter": 'metadata["year"] >= 2004',
    "where": {"category": "databases"},
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, encoder):
    uri = str(tmp_path_factory.mktemp("integrations") / "corpus.db")
    with SemanticSearch(uri=uri, collection="corpus", encoder=encoder) as engine:
        engine.ingest_records(RECORDS)
        yield engine


@pytest.fixture(scope="module")
def langchain_retriever():
    pytest.importorskip(
        "langchain_core",
        reason="langchain-core is not installed (semsearch[langchain])",
    )
    from semsearch.integrations.langchain import SemsearchRetriever

    return SemsearchRetriever


@pytest.fixture(scope="module")
def llamaindex_retriever():
    pytest.importorskip(
        "llama_index.core",
        reason="llama-index-core is not installed (semsearch[llamaindex])",
    )
    from semsearch.integrations.llamaindex import SemsearchRetriever

    return SemsearchRetriever


def _expected(engine, query, **options):
    hits = engine.search(query, **options)
    return [hit.id for hit in hits], [hit.text for hit in hits], [h.score for h in hits]


# -- LangChain ---------------------------------------------------------------


def test_langchain_is_base_retriever(langchain_retriever, engine):
    from langchain_core.retrievers import BaseRetriever

    assert isinstance(langchain_retriever(engine=engine), BaseRetriever)


@pytest.mark.parametrize("options", [{"k": 4}, FILTERED], ids=["plain", "filtered"])
def test_langchain_same_hits_as_engine(langchain_retriever, engine, options):
    retriever = langchain_retriever(engine=engine, **options)
    documents = retriever.invoke(DATABASE_QUESTION)
    ids, texts, scores = _expected(engine, DATABASE_QUESTION, **options)
    assert [doc.id for doc in documents] == ids
    assert [doc.page_content for doc in documents] == texts
    assert [doc.metadata["score"] for doc in documents] == pytest.approx(scores)


def test_langchain_filter_applied(langchain_retriever, engine):
    documents = langchain_retriever(engine=engine, **FILTERED).invoke("anything")
    assert documents
    assert {doc.metadata["metadata"]["category"] for doc in documents} == {"databases"}


def test_langchain_metadata_fields(langchain_retriever, engine):
    document = langchain_retriever(engine=engine, k=1).invoke(DATABASE_QUESTION)[0]
    assert "text" not in document.metadata
    assert document.metadata["doc_id"] == "sqlite-journal"
    assert document.metadata["source"] == "notes/sqlite.md"
    assert document.metadata["title"] == "Atomic commit in SQLite"


def test_langchain_async_same_hits(langchain_retriever, engine):
    retriever = langchain_retriever(engine=engine, k=3, mode="hybrid")
    documents = asyncio.run(retriever.ainvoke(DATABASE_QUESTION))
    ids, _, _ = _expected(engine, DATABASE_QUESTION, k=3, mode="hybrid")
    assert [doc.id for doc in documents] == ids


def test_langchain_invalid_k(langchain_retriever, engine):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="k"):
        langchain_retriever(engine=engine, k=0)


# -- LlamaIndex --------------------------------------------------------------


def test_llamaindex_is_base_retriever(llamaindex_retriever, engine):
    from llama_index.core.retrievers import BaseRetriever

    assert isinstance(llamaindex_retriever(engine), BaseRetriever)


@pytest.mark.parametrize("options", [{"k": 4}, FILTERED], ids=["plain", "filtered"])
def test_llamaindex_same_hits_as_engine(llamaindex_retriever, engine, options):
    nodes = llamaindex_retriever(engine, **options).retrieve(DATABASE_QUESTION)
    ids, texts, scores = _expected(engine, DATABASE_QUESTION, **options)
    assert [node.node.node_id for node in nodes] == ids
    assert [node.node.get_content() for node in nodes] == texts
    assert [node.score for node in nodes] == pytest.approx(scores)


def test_llamaindex_node_fields(llamaindex_retriever, engine):
    from llama_index.core.schema import MetadataMode, TextNode

    node = llamaindex_retriever(engine, k=1).retrieve(DATABASE_QUESTION)[0].node
    llm_text = node.get_content(metadata_mode=MetadataMode.LLM)
    assert isinstance(node, TextNode)
    assert node.metadata["doc_id"] == "sqlite-journal"
    assert "text" not in node.metadata
    assert node.end_char_idx == len(RECORDS[0]["text"])
    assert "title: Atomic commit in SQLite" in llm_text
    assert "doc_id" not in llm_text


def test_llamaindex_async_same_hits(llamaindex_retriever, engine):
    retriever = llamaindex_retriever(engine, **FILTERED)
    nodes = asyncio.run(retriever.aretrieve(DATABASE_QUESTION))
    ids, _, _ = _expected(engine, DATABASE_QUESTION, **FILTERED)
    assert [node.node.node_id for node in nodes] == ids


def test_llamaindex_invalid_k(llamaindex_retriever, engine):
    from semsearch import ConfigError

    with pytest.raises(ConfigError, match="invalid k 0"):
        llamaindex_retriever(engine, k=0)
