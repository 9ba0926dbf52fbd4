"""The Python entry point for applications: one engine over one collection."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .search import Fusion, Mode
from .settings import Settings
from .types import Document, Hit

if TYPE_CHECKING:
    import numpy as np

    from .chunking import Chunker
    from .encoder import Encoder
    from .ingest import IngestReport, ProgressCallback
    from .rerank import Reranker
    from .store import MilvusStore, StoredDocument

logger = logging.getLogger(__name__)


class SemanticSearch:
    """Ingest documents into a Milvus collection and search it by meaning.

    The model and the Milvus connection are opened on first use and shared by all
    calls. Use it as a context manager, or call ``close()``, to release them.

    >>> with SemanticSearch(uri="./semsearch.db") as engine:  # doctest: +SKIP
    ...     engine.ingest(["docs/"])
    ...     hits = engine.search("how do I roll back a transaction?", k=5)
    """

    def __init__(
        self,
        uri: str | None = None,
        collection: str | None = None,
        model: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        device: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        settings: Settings | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        base = settings or Settings.resolve()
        self.settings = base.with_overrides(
            uri=uri,
            collection=collection,
            model=None if model is None else os.fspath(model),
            token=token,
            device=device,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
        )
        self._encoder = encoder
        self._store: MilvusStore | None = None
        self._chunker: Chunker | None = None
        self._checked = False
        self._rerankers: dict[str, Reranker] = {}

    # -- components ---------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from .encoder import Encoder

            self._encoder = Encoder(
                self.settings.model,
                device=self.settings.device,
                batch_tokens=self.settings.batch_tokens,
            )
        return self._encoder

    @property
    def store(self) -> MilvusStore:
        if self._store is None:
            from .store import MilvusStore

            self._store = MilvusStore(
                self.settings.uri,
                self.settings.collection,
                token=self.settings.token,
            )
        return self._store

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            from .chunking import Chunker, content_token_budget

            encoder = self.encoder
            chunk_size = self.settings.chunk_size or encoder.max_seq_length
            if chunk_size > encoder.max_seq_length:
                raise ConfigError(
                    f"chunk size {chunk_size} exceeds the model's max sequence length "
                    f"{encoder.max_seq_length}; use --chunk-size "
                    f"{encoder.max_seq_length} or less"
                )
            budget = content_token_budget(
                encoder.tokenizer, chunk_size, encoder.spec.passage_prefix
            )
            # The chunker runs on the ingest loader thread while the encoder
            # tokenises on another, and a fast tokenizer must not be shared
            # between threads, so the chunker gets its own copy.
            tokenizer = copy.deepcopy(encoder.tokenizer)
            self._chunker = Chunker(
                tokenizer, budget, overlap=self.settings.chunk_overlap
            )
        return self._chunker

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> SemanticSearch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- ingest -------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        text_field: str = "text",
        id_field: str | None = None,
        title_field: str | None = "title",
        metadata: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Load files and folders, then sync their chunks into the collection.

        Unreadable files and records are skipped and listed in the report's
        ``skipped``; the rest are ingested.
        """
        from .ingest import IngestReport
        from .loaders import iter_documents

        report = IngestReport()
        documents = iter_documents(
            paths,
            include=include,
            exclude=exclude,
            text_field=text_field,
            id_field=id_field,
            title_field=title_field,
            extra_metadata=metadata,
            on_skip=report.skipped.append,
        )
        return self.ingest_documents(documents, report=report, on_progress=on_progress)

    def ingest_documents(
        self,
        documents: Iterable[Document],
        *,
        report: IngestReport | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Sync already-loaded documents into the collection."""
        from .ingest import Ingester

        ingester = Ingester(
            self.encoder, self.store, self.chunker, on_progress=on_progress
        )
        result = ingester.run(documents, report=report)
        self._checked = True
        return result

    # -- search -------------------------------------------------------------

    def _open_for_search(self) -> None:
        if self._checked:
            return
        self.store.require()
        self.store.check_fingerprint(self.encoder.fingerprint)
        self._checked = True

    def search(
        self,
        query: str,
        k: int = 10,
        filter: str | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        mode: Mode = "dense",
        fusion: Fusion = "normalized",
        group_by_doc: bool = False,
        mmr: float | None = None,
        rerank: str | os.PathLike[str] | None = None,
        candidates: int | None = None,
    ) -> list[Hit]:
        """Return the ``k`` best chunks for ``query``, best first.

        ``mode`` is "dense" (cosine similarity of embeddings), "bm25" (Milvus
        full-text search) or "hybrid" (both, fused into scores in [0, 1], or RRF
        scores with ``fusion="rrf"``). ``filter`` is a Milvus boolean expression
        and ``where`` adds equality conditions. ``group_by_doc`` keeps the best
        chunk per document, ``mmr`` (0 to 1) trades relevance for diversity, and
        ``rerank`` names a cross-encoder model that rescores the candidates.
        """
        return self.search_many(
            [query],
            k,
            filter,
            where=where,
            min_score=min_score,
            mode=mode,
            fusion=fusion,
            group_by_doc=group_by_doc,
            mmr=mmr,
            rerank=rerank,
            candidates=candidates,
        )[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 10,
        filter: str | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        mode: Mode = "dense",
        fusion: Fusion = "normalized",
        group_by_doc: bool = False,
        mmr: float | None = None,
        rerank: str | os.PathLike[str] | None = None,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        """Search several queries at once; returns one hit list per query."""
        from .filters import combine
        from .search import Searcher, SearchOptions

        options = SearchOptions(
            k=k,
            mode=mode,
            fusion=fusion,
            group_by_doc=group_by_doc,
            mmr_lambda=mmr,
            min_score=min_score,
            candidates=candidates,
        )
        options.validate()
        if not queries:
            return []
        expression = combine(filter, where)
        self._open_for_search()
        reranker = self._reranker(rerank) if rerank else None
        searcher = Searcher(self.encoder, self.store, reranker)
        return searcher.search_many(list(queries), options, expression)

    def _reranker(self, model: str | os.PathLike[str]) -> Reranker:
        from .rerank import Reranker

        name = os.fspath(model)
        if name not in self._rerankers:
            self._rerankers[name] = Reranker(name, device=self.settings.device)
        return self._rerankers[name]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries(list(queries))

    def similarity(self, first: str, second: str) -> float:
        """Return the cosine similarity of two texts embedded as passages."""
        vectors = self.encoder.encode_passages([first, second])
        return float(vectors[0] @ vectors[1])

    # -- inspection and deletion --------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return the collection's name, URI, row and document counts and model."""
        store = self.store
        store.require()
        return {
            "collection": store.collection,
            "uri": store.uri,
            "rows": store.count(),
            "documents": store.count("ordinal == 0"),
            "model": store.fingerprint(),
        }

    def sources(self) -> list[StoredDocument]:
        self.store.require()
        return self.store.documents()

    def delete_source(self, source: str) -> int:
        """Delete every chunk of the documents from ``source``; return the row count."""
        from .filters import quote_string

        self.store.require()
        expression = f"source == {quote_string(source)}"
        count = self.store.count(expression)
        if count:
            self.store.delete_where(expression)
        return count


def format_context(hits: Sequence[Hit], *, max_chars: int | None = None) -> str:
    """Format hits as a numbered context block with sources, ready for a prompt."""
    blocks = []
    used = 0
    for number, hit in enumerate(hits, start=1):
        header = f"[{number}] {hit.title or hit.source} ({hit.source}, chars {hit.start}-{hit.end})"
        block = f"{header}\n{hit.text.strip()}"
        if max_chars is not None and used + len(block) > max_chars:
            break
        blocks.append(block)
        used += len(block) + 2
    return "\n\n".join(blocks)


__all__ = ["SemanticSearch", "format_context"]
