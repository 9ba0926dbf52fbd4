"""The query path: embed, retrieve, fuse, group, rerank, diversify, threshold.

Dense search scores are cosine similarities. BM25 scores are unbounded, so hybrid
search fuses the two lists into scores in [0, 1] (or RRF scores on request).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError
from .types import Hit

if TYPE_CHECKING:
    import numpy as np

    from .encoder import Encoder
    from .rerank import Reranker
    from .store import MilvusStore

logger = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]
Fusion = Literal["normalized", "rrf"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")
FUSIONS: tuple[str, ...] = ("normalized", "rrf")

# Milvus caps one search at 16,384 results.
MAX_CANDIDATES = 16_384


@dataclass(frozen=True)
class SearchOptions:
    """Options for one search request.

    ``bm25_scale`` is the BM25 score that normalised fusion maps to 0.5, and
    ``hybrid_weights`` weighs the dense and BM25 lists in that order. A grid
    over both on the SciFact train split put these defaults within 0.006 nDCG@10
    of the best setting (docs/benchmarks.md).
    """

    k: int = 10
    mode: Mode = "dense"
    fusion: Fusion = "normalized"
    hybrid_weights: tuple[float, float] = (0.5, 0.5)
    bm25_scale: float = 10.0
    rrf_k: int = 60
    candidates: int | None = None
    group_by_doc: bool = False
    mmr_lambda: float | None = None
    min_score: float | None = None

    def validate(self) -> None:
        if self.k < 1 or self.k > MAX_CANDIDATES:
            raise ConfigError(f"invalid k {self.k!r}: use 1 to {MAX_CANDIDATES}")
        if self.mode not in MODES:
            raise ConfigError(f"invalid search mode {self.mode!r}: use one of {MODES}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"invalid fusion {self.fusion!r}: use one of {FUSIONS}")
        if self.mmr_lambda is not None and not 0.0 <= self.mmr_lambda <= 1.0:
            raise ConfigError(
                f"invalid MMR lambda {self.mmr_lambda!r}: use a value from 0 "
                "(most diverse) to 1 (most relevant)"
            )
        if self.candidates is not None and self.candidates < self.k:
            raise ConfigError(
                f"candidates {self.candidates!r} is below k {self.k!r}; raise it"
            )

    def candidate_count(self) -> int:
        """Number of chunks fetched per list before fusion, grouping and reranking."""
        if self.candidates is not None:
            return min(self.candidates, MAX_CANDIDATES)
        reshaped = (
            self.mode == "hybrid" or self.group_by_doc or self.mmr_lambda is not None
        )
        if not reshaped:
            return self.k
        return min(max(3 * self.k, 50), MAX_CANDIDATES)


class Searcher:
    """Search one store with one encoder."""

    def __init__(
        self,
        encoder: Encoder,
        store: MilvusStore,
        reranker: Reranker | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.reranker = reranker

    def search_many(
        self,
        queries: Sequence[str],
        options: SearchOptions,
        expression: str = "",
        vectors: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Search each query. ``vectors`` are their embeddings, if already computed."""
        options.validate()
        if not queries:
            return []
        count = options.candidate_count()
        if self.reranker is not None:
            count = max(count, min(max(3 * options.k, 50), MAX_CANDIDATES))
        dense: list[list[Hit]] = [[] for _ in queries]
        lexical: list[list[Hit]] = [[] for _ in queries]
        needs_vectors = (
            options.mode in ("dense", "hybrid") or options.mmr_lambda is not None
        )
        if needs_vectors and vectors is None:
            vectors = self.encoder.encode_queries(list(queries))
        if options.mode in ("dense", "hybrid"):
            dense = self.store.search(
                vectors.tolist(),
                count,
                expression,
                group_by_doc=options.group_by_doc and options.mode == "dense",
            )
        if options.mode in ("bm25", "hybrid"):
            lexical = self.store.search_lexical(list(queries), count, expression)

        results = []
        for index, query in enumerate(queries):
            hits = self._combine(dense[index], lexical[index], options)
            if options.group_by_doc:
                from .fusion import group_by_document

                hits = group_by_document(hits)
            if self.reranker is not None:
                hits = self.reranker.rerank(query, hits)
            if options.mmr_lambda is not None:
                hits = self._diversify(hits, vectors[index], options)
            if options.min_score is not None:
                hits = [hit for hit in hits if hit.score >= options.min_score]
            results.append(hits[: options.k])
        return results

    def _combine(
        self, dense: list[Hit], lexical: list[Hit], options: SearchOptions
    ) -> list[Hit]:
        from .fusion import normalized_fusion, reciprocal_rank_fusion

        if options.mode == "dense":
            return dense
        if options.mode == "bm25":
            return lexical
        if options.fusion == "rrf":
            return reciprocal_rank_fusion(
                [dense, lexical], k=options.rrf_k, weights=options.hybrid_weights
            )
        return normalized_fusion(
            [dense, lexical],
            weights=options.hybrid_weights,
            method="calibrated",
            scales=["cosine", options.bm25_scale],
        )

    def _diversify(
        self, hits: list[Hit], query_vector, options: SearchOptions
    ) -> list[Hit]:
        import numpy as np

        from .fusion import mmr

        if not hits:
            return hits
        stored = self.store.vectors([hit.id for hit in hits])
        vectors = np.asarray([stored[hit.id] for hit in hits], dtype=np.float32)
        return mmr(
            hits, query_vector, vectors, lambda_=options.mmr_lambda, limit=options.k
        )


def with_score(hit: Hit, score: float) -> Hit:
    return replace(hit, score=score)
