"""Run a BEIR-format benchmark through the same ingest and search path users get."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .evaluate import BeirDataset, evaluate_run
from .types import Document

if TYPE_CHECKING:
    from .api import SemanticSearch
    from .search import Fusion, Mode

logger = logging.getLogger(__name__)

# Documents retrieved per query: Recall@100 and MAP@100 need a depth of 100.
RUN_DEPTH = 100


@dataclass
class EvalResult:
    """Metrics of one benchmark run, with what produced them."""

    dataset: str
    split: str
    mode: str
    queries: int
    documents: int
    chunks: int
    metrics: dict[str, float]
    ingest_seconds: float
    search_seconds: float
    ann_recall_at_10: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # Query id to {doc id: score} at depth RUN_DEPTH, for write_trec_run.
    run: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "mode": self.mode,
            "queries": self.queries,
            "documents": self.documents,
            "chunks": self.chunks,
            "metrics": {key: round(value, 4) for key, value in self.metrics.items()},
            "ann_recall@10": (
                None
                if self.ann_recall_at_10 is None
                else round(self.ann_recall_at_10, 4)
            ),
            "ingest_seconds": round(self.ingest_seconds, 1),
            "search_seconds": round(self.search_seconds, 1),
            "settings": self.settings,
        }


def beir_documents(dataset: BeirDataset) -> Iterator[Document]:
    """Turn a BEIR corpus into documents whose text is the title, then the body."""
    for doc_id, (title, body) in dataset.corpus.items():
        text = f"{title}\n\n{body}" if title else body
        yield Document(
            id=doc_id,
            source=f"{dataset.name}/{doc_id}",
            title=title or doc_id,
            text=text,
            content_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            metadata={"dataset": dataset.name},
        )


def run_benchmark(
    engine: SemanticSearch,
    dataset: BeirDataset,
    *,
    split: str,
    mode: Mode = "dense",
    fusion: Fusion = "normalized",
    k: int = 10,
    batch_size: int = 64,
    measure_ann_recall: bool = False,
    expression: str | None = None,
) -> EvalResult:
    """Ingest the corpus (a sync, so a second run embeds nothing) and score the run.

    Stored documents that are not in the corpus are deleted first, so a
    collection left by another corpus of the same name is not scored with it.
    """
    started = time.perf_counter()
    report = engine.ingest_documents(beir_documents(dataset))
    _delete_documents_outside_corpus(engine, dataset)
    ingest_seconds = time.perf_counter() - started
    if report.skipped:
        logger.warning("%d corpus documents were skipped", len(report.skipped))

    query_ids = list(dataset.queries)
    run: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for start in range(0, len(query_ids), batch_size):
        batch = query_ids[start : start + batch_size]
        results = engine.search_many(
            [dataset.queries[q] for q in batch],
            k=RUN_DEPTH,
            mode=mode,
            fusion=fusion,
            group_by_doc=True,
            candidates=3 * RUN_DEPTH,
            filter=expression,
        )
        for query_id, hits in zip(batch, results, strict=True):
            run[query_id] = {hit.doc_id: hit.score for hit in hits}
    search_seconds = time.perf_counter() - started

    metrics = evaluate_run(dataset.qrels, run, k_values=sorted({k, 10, 100}))
    ann_recall = None
    if measure_ann_recall:
        ann_recall = ann_recall_at_k(engine, [dataset.queries[q] for q in query_ids])
    return EvalResult(
        dataset=dataset.name,
        split=split,
        mode=mode,
        queries=len(query_ids),
        documents=len(dataset.corpus),
        chunks=engine.store.count(),
        metrics=metrics,
        ingest_seconds=ingest_seconds,
        search_seconds=search_seconds,
        ann_recall_at_10=ann_recall,
        settings={"fusion": fusion if mode == "hybrid" else None, "filter": expression},
        run=run,
    )


def _delete_documents_outside_corpus(
    engine: SemanticSearch, dataset: BeirDataset
) -> None:
    stale = [
        stored.doc_id
        for stored in engine.store.documents()
        if stored.doc_id not in dataset.corpus
    ]
    if not stale:
        return
    engine.store.delete_documents(stale)
    logger.info(
        "removed %d stored documents that are not in the corpus of %s",
        len(stale),
        dataset.name,
    )


def ann_recall_at_k(
    engine: SemanticSearch, queries: Sequence[str], k: int = 10
) -> float:
    """Return the mean overlap of the index's top ``k`` chunks with exact search.

    Exact search is a brute-force dot product over every stored vector (they are
    unit length, so it ranks by cosine similarity).
    """
    import numpy as np

    rows = engine.store.query("", ["id", "vector"])
    ids = [row["id"] for row in rows]
    matrix = np.asarray([row["vector"] for row in rows], dtype=np.float32)
    vectors = engine.encoder.encode_queries(list(queries))
    approximate = engine.store.search(vectors.tolist(), k)

    depth = min(k, len(ids))
    if depth == 0:
        return 1.0
    overlaps = []
    for vector, hits in zip(vectors, approximate, strict=True):
        scores = matrix @ vector
        exact = np.argsort(-scores, kind="stable")[:depth]
        exact_ids = {ids[i] for i in exact}
        overlaps.append(len(exact_ids & {hit.id for hit in hits[:depth]}) / depth)
    return float(np.mean(overlaps))
