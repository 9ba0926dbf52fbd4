"""Search modes on Milvus Lite with the real model: BM25, hybrid, grouping, MMR, rerank."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from semsearch import SemanticSearch
from semsearch.errors import ConfigError
from semsearch.types import Document

TEXTS = {
    "lighthouse": [
        "A lighthouse guides ships at night with a rotating beam of light.",
        "Lighthouse keepers once trimmed the lamp wicks every evening.",
        "The Fresnel lens lets a lighthouse beam reach far out to sea.",
    ],
    "bread": [
        "Sourdough bread rises with wild yeast and lactic acid bacteria.",
        "Knead the dough, let it proof overnight, then bake it in a hot oven.",
    ],
    "volcano": [
        "A volcano erupts when magma rises through cracks in the crust.",
        "Basaltic lava flows from shield volcanoes such as Mauna Loa.",
    ],
}


def _documents() -> list[Document]:
    documents = []
    for topic, paragraphs in TEXTS.items():
        text = "\n\n".join(paragraphs)
        documents.append(
            Document(
                id=topic,
                source=f"{topic}.txt",
                title=topic,
                text=text,
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
                metadata={"topic": topic},
            )
        )
    return documents


@pytest.fixture(scope="module")
def engine(tmp_path_factory, encoder):
    uri = str(tmp_path_factory.mktemp("modes") / "modes.db")
    # A small chunk size puts each paragraph in its own chunk.
    with SemanticSearch(uri=uri, encoder=encoder, chunk_size=24, chunk_overlap=0) as engine:
        engine.ingest_documents(_documents())
        yield engine


def test_store_has_lexical_field(engine):
    assert engine.store.has_lexical


def test_bm25_finds_exact_term(engine):
    hits = engine.search("Fresnel", k=3, mode="bm25")
    assert hits[0].text.startswith("The Fresnel lens")
    assert len(hits) == 1


def test_bm25_matches_stemmed_forms(engine):
    hits = engine.search("erupting volcanoes", k=5, mode="bm25")
    assert {hit.doc_id for hit in hits} == {"volcano"}


def test_bm25_scores_positive_descending(engine):
    hits = engine.search("lighthouse beam", k=5, mode="bm25")
    scores = [hit.score for hit in hits]
    assert all(score > 0 for score in scores)
    assert scores == sorted(scores, reverse=True)


def test_bm25_only_stop_words_returns_nothing(engine):
    assert engine.search("the and of", k=5, mode="bm25") == []


def test_hybrid_scores_within_unit_interval(engine):
    hits = engine.search("how do ships find their way at night", k=7, mode="hybrid")
    assert hits
    assert all(0.0 <= hit.score <= 1.0 for hit in hits)
    assert hits[0].doc_id == "lighthouse"


def test_hybrid_min_score_threshold(engine):
    everything = engine.search("lighthouse lamp", k=7, mode="hybrid")
    kept = engine.search("lighthouse lamp", k=7, mode="hybrid", min_score=0.3)
    assert all(hit.score >= 0.3 for hit in kept)
    assert [hit.id for hit in kept] == [hit.id for hit in everything if hit.score >= 0.3]
    assert 0 < len(kept) < len(everything)


def test_hybrid_rrf_scores(engine):
    hits = engine.search("baking bread", k=5, mode="hybrid", fusion="rrf")
    assert hits[0].doc_id == "bread"
    assert all(0.0 < hit.score <= 2 / 61 for hit in hits)


def test_group_by_doc_unique_documents(engine):
    hits = engine.search("light and ships", k=3, group_by_doc=True)
    doc_ids = [hit.doc_id for hit in hits]
    assert len(doc_ids) == len(set(doc_ids))
    assert doc_ids[0] == "lighthouse"


def test_group_by_doc_hybrid(engine):
    hits = engine.search("lava and magma", k=3, mode="hybrid", group_by_doc=True)
    doc_ids = [hit.doc_id for hit in hits]
    assert len(doc_ids) == len(set(doc_ids))
    assert doc_ids[0] == "volcano"


def test_mmr_one_equals_relevance_order(engine):
    plain = engine.search("lighthouse", k=4)
    diverse = engine.search("lighthouse", k=4, mmr=1.0)
    assert [hit.id for hit in diverse] == [hit.id for hit in plain]


def test_mmr_low_lambda_spreads_documents(engine):
    plain = engine.search("lighthouse", k=3)
    diverse = engine.search("lighthouse", k=3, mmr=0.1)
    assert len({hit.doc_id for hit in plain}) == 1
    assert len({hit.doc_id for hit in diverse}) > 1


def test_search_invalid_mode(engine):
    with pytest.raises(ConfigError, match="invalid search mode 'sparse'"):
        engine.search("x", mode="sparse")  # type: ignore[arg-type]


def test_search_invalid_mmr(engine):
    with pytest.raises(ConfigError, match="MMR lambda 1.5"):
        engine.search("x", mmr=1.5)


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory, encoder) -> Path:
    """A randomly initialised cross-encoder, since no trained weights can be fetched."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("reranker")
    config = BertConfig(
        vocab_size=encoder.tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    encoder.tokenizer.save_pretrained(directory)
    return directory


def test_rerank_reorders_candidates(engine, tiny_reranker):
    from semsearch.rerank import Reranker

    candidates = engine.search("lighthouse keeper", k=7)
    reranked = engine.search("lighthouse keeper", k=7, rerank=tiny_reranker)
    expected = Reranker(tiny_reranker, device="cpu").score(
        "lighthouse keeper", [hit.text for hit in candidates]
    )
    by_id = {hit.id: float(score) for hit, score in zip(candidates, expected)}
    assert {hit.id for hit in reranked} == set(by_id)
    assert [hit.score for hit in reranked] == sorted(by_id.values(), reverse=True)
    assert all(0.0 <= hit.score <= 1.0 for hit in reranked)


def test_rerank_missing_model(engine, tmp_path):
    from semsearch.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no-such-reranker"):
        engine.search("x", rerank=str(tmp_path / "no-such-reranker"))
