"""The Python entry point for applications: one engine over one collection."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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
    from .loaders import SkippedInput
    from .migrate import MigrationProgress, MigrationReport
    from .rerank import Reranker
    from .store import Capabilities, MilvusStore, StoredDocument

logger = logging.getLogger(__name__)

# Worker threads of the executor behind asearch(). The store and the encoder
# each run one call at a time, so more threads only queue on their locks.
ASYNC_WORKERS = 4

# Document ids per Milvus expression when counting or deleting by id.
IDS_PER_EXPRESSION = 256


class SemanticSearch:
    """Ingest documents into a Milvus collection and search it by meaning.

    The model and the Milvus connection are opened on first use and shared by all
    calls. Use it as a context manager, or call ``close()``, to release them.

    One engine may be shared by threads and by ``asearch()`` callers: the store
    serialises its Milvus calls and the encoder runs one batch at a time.

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
        backend: str | None = None,
        precision: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        index_type: str | None = None,
        index_params: Mapping[str, Any] | None = None,
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
            backend=backend,
            precision=precision,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            index_type=index_type,
            index_params=index_params,
        )
        self._encoder = encoder
        self._store: MilvusStore | None = None
        self._chunker: Chunker | None = None
        self._checked = False
        self._rerankers: dict[str, Reranker] = {}
        # Guards the lazy creation of components, so concurrent first calls
        # load the model and open the connection once.
        self._components_lock = threading.RLock()
        self._ingest_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    # -- components ---------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        if self._encoder is not None:
            return self._encoder
        with self._components_lock:
            if self._encoder is None:
                from .encoder import Encoder

                self._encoder = Encoder(
                    self.settings.model,
                    device=self.settings.device,
                    backend=self.settings.backend,  # type: ignore[arg-type]
                    precision=self.settings.precision,  # type: ignore[arg-type]
                    batch_tokens=self.settings.batch_tokens,
                )
        return self._encoder

    @property
    def store(self) -> MilvusStore:
        if self._store is not None:
            return self._store
        with self._components_lock:
            if self._store is None:
                from .store import MilvusStore

                self._store = MilvusStore(
                    self.settings.uri,
                    self.settings.collection,
                    token=self.settings.token,
                    index_type=self.settings.index_type,
                    index_params=self.settings.index_params,
                )
        return self._store

    @property
    def chunker(self) -> Chunker:
        if self._chunker is not None:
            return self._chunker
        with self._components_lock:
            return self._create_chunker()

    def _create_chunker(self) -> Chunker:
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
            overlap = self.settings.chunk_overlap
            if overlap >= budget:
                raise ConfigError(
                    f"chunk overlap {overlap} must be smaller than the {budget} "
                    f"content tokens of a {chunk_size}-token chunk (the rest are "
                    f"special tokens), so each chunk adds new text; use "
                    f"--chunk-overlap {budget - 1} or less, or a larger --chunk-size"
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
        """Wait for running ``asearch()`` calls, then close the Milvus connection."""
        with self._components_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
            if self._store is not None:
                self._store.close()
                self._store = None
            self._checked = False

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
        prune: bool = False,
        dry_run: bool = False,
    ) -> IngestReport:
        """Load files and folders, then sync their chunks into the collection.

        Unreadable files and records are skipped and listed in the report's
        ``skipped``; the rest are ingested. Each document records the absolute
        path it was given under (``metadata["ingest_root"]``). ``prune`` deletes
        stored documents from these same paths that are gone from disk, and
        ``dry_run`` computes the plan without writing anything; docs/sync.md has
        the rules.
        """
        from .errors import LoadError
        from .ingest import ROOT_KEY, IngestReport
        from .loaders import iter_documents

        given = [os.fspath(path) for path in paths]
        for path in given:
            if not os.path.exists(path):
                reason = "file or folder not found; check the path and retry"
                raise LoadError(path, reason)
        roots = [str(Path(path).resolve()) for path in given]
        report = IngestReport()

        def documents() -> Iterator[Document]:
            for path, root in zip(given, roots):
                for document in iter_documents(
                    [path],
                    include=include,
                    exclude=exclude,
                    text_field=text_field,
                    id_field=id_field,
                    title_field=title_field,
                    extra_metadata=metadata,
                    on_skip=report.skipped.append,
                ):
                    stamped = {**document.metadata, ROOT_KEY: root}
                    yield dataclasses.replace(document, metadata=stamped)

        return self.ingest_documents(
            documents(),
            report=report,
            on_progress=on_progress,
            prune_roots=roots if prune else None,
            dry_run=dry_run,
        )

    def ingest_documents(
        self,
        documents: Iterable[Document],
        *,
        report: IngestReport | None = None,
        on_progress: ProgressCallback | None = None,
        prune_roots: Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> IngestReport:
        """Sync already-loaded documents into the collection.

        ``prune_roots`` and ``dry_run`` work as in ``Ingester.run``.
        """
        from .ingest import Ingester

        # One ingest at a time: runs share the chunker, whose tokenizer must
        # not be used by two loader threads at once.
        with self._ingest_lock:
            ingester = Ingester(
                self.encoder, self.store, self.chunker, on_progress=on_progress
            )
            result = ingester.run(
                documents, report=report, prune_roots=prune_roots, dry_run=dry_run
            )
            if not dry_run and (result.chunks or result.deleted):
                self.store.flush_after_writes()
        self._checked = not dry_run or self._checked
        return result

    def ingest_records(
        self,
        records: Iterable[Mapping[str, Any] | object],
        *,
        metadata: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Chunk, embed and store in-memory records, as ``ingest()`` does files.

        A record is a dict, or an object with the same attributes: ``text``, and
        optionally ``id``, ``title``, ``source`` and ``metadata`` (a dict). The
        id defaults to the sha256 of the text, so the same text is stored once.
        ``metadata`` is added to every record. Invalid records are skipped and
        listed in the report's ``skipped``; the rest are ingested.
        """
        from .ingest import IngestReport

        if isinstance(records, (str, bytes, Mapping)):
            raise TypeError(
                "ingest_records() expects an iterable of records but got a single "
                f"{type(records).__name__}; wrap it in a list"
            )
        report = IngestReport()
        documents = _documents_from_records(records, metadata, report.skipped.append)
        return self.ingest_documents(documents, report=report, on_progress=on_progress)

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
        query_vectors: np.ndarray | Sequence[Sequence[float]] | None = None,
    ) -> list[list[Hit]]:
        """Search several queries at once; returns one hit list per query.

        ``query_vectors`` are the queries' embeddings from ``embed_queries()``,
        one row per query, when the caller has already computed them.
        """
        import numpy as np

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
        if isinstance(queries, str):
            raise TypeError(
                "search_many() expects a sequence of queries but got a single str; "
                "wrap it in a list or call search()"
            )
        if not queries:
            return []
        for query in queries:
            if not query.strip():
                raise ConfigError(
                    "query is empty: pass text to search for (whitespace alone "
                    "matches nothing)"
                )
        vectors = None
        if query_vectors is not None:
            vectors = np.asarray(query_vectors, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(queries):
                raise ConfigError(
                    f"query_vectors has shape {vectors.shape}, but {len(queries)} "
                    "queries need one row each; pass embed_queries(queries)"
                )
        expression = combine(filter, where)
        self._open_for_search()
        reranker = self._reranker(rerank) if rerank else None
        searcher = Searcher(self.encoder, self.store, reranker)
        with _user_filter_errors(filter):
            return searcher.search_many(list(queries), options, expression, vectors)

    async def asearch(
        self, query: str, k: int = 10, filter: str | None = None, **options: Any
    ) -> list[Hit]:
        """Run ``search()`` in a worker thread, so the event loop stays free.

        Takes the same arguments as ``search()``. Concurrent calls are safe and
        share the model and the Milvus connection.
        """
        call = functools.partial(self.search, query, k, filter, **options)
        return await asyncio.get_running_loop().run_in_executor(
            self._worker_pool(), call
        )

    async def asearch_many(
        self,
        queries: Sequence[str],
        k: int = 10,
        filter: str | None = None,
        **options: Any,
    ) -> list[list[Hit]]:
        """Run ``search_many()`` in a worker thread; takes the same arguments."""
        call = functools.partial(self.search_many, queries, k, filter, **options)
        return await asyncio.get_running_loop().run_in_executor(
            self._worker_pool(), call
        )

    def _worker_pool(self) -> ThreadPoolExecutor:
        with self._components_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=ASYNC_WORKERS, thread_name_prefix="semsearch-search"
                )
            return self._executor

    def _reranker(self, model: str | os.PathLike[str]) -> Reranker:
        from .rerank import Reranker

        name = os.fspath(model)
        if name not in self._rerankers:
            self._rerankers[name] = Reranker(name, device=self.settings.device)
        return self._rerankers[name]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embed queries as unit-norm float32 rows, as the search path does."""
        return self.encoder.encode_queries(list(queries))

    def similarity(self, first: str, second: str) -> float:
        """Return the cosine similarity of two texts embedded as passages."""
        vectors = self.encoder.encode_passages([first, second])
        return float(vectors[0] @ vectors[1])

    # -- inspection and deletion --------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return the collection's name, URI, row and document counts and model.

        A password in the URI is replaced by ``***``.
        """
        from .store import redact_uri

        store = self.store
        store.require()
        return {
            "collection": store.collection,
            "uri": redact_uri(store.uri),
            "rows": store.count(),
            "documents": store.count("ordinal == 0"),
            "model": store.fingerprint(),
        }

    def capabilities(self) -> Capabilities:
        """Return what the backend serves: BM25, grouping, index types, version."""
        return self.store.capabilities()

    def migrate_to(
        self,
        uri: str,
        collection: str | None = None,
        *,
        token: str | None = None,
        batch_size: int = 1000,
        on_progress: MigrationProgress | None = None,
    ) -> MigrationReport:
        """Copy this collection to another backend without embedding again.

        The target collection (default: this one's name) is created there with
        this engine's index settings, or must record the same model. Rows are
        upserted, so running it again is safe. See ``semsearch.migrate``.
        """
        from .migrate import migrate
        from .store import MilvusStore

        target = MilvusStore(
            uri,
            collection or self.settings.collection,
            token=token,
            index_type=self.settings.index_type,
            index_params=self.settings.index_params,
        )
        with target:
            return migrate(
                self.store, target, batch_size=batch_size, on_progress=on_progress
            )

    def sources(self) -> list[StoredDocument]:
        self.store.require()
        return self.store.documents()

    def delete_source(self, source: str) -> int:
        """Delete every chunk of the documents from ``source``; return the row count."""
        return self.delete(source=source)

    def delete(
        self,
        ids: Iterable[str] | None = None,
        *,
        source: str | None = None,
        filter: str | None = None,
    ) -> int:
        """Delete matching chunks and return the number of rows deleted.

        ``ids`` are document ids (``Hit.doc_id``), ``source`` is a stored source
        path and ``filter`` a Milvus boolean expression. When several are given,
        a row must match all of them. Raises ConfigError when none is given and
        FilterError for a filter that does not parse.
        """
        from .filters import combine, quote_string

        if ids is None and source is None and filter is None:
            raise ConfigError(
                "delete() needs ids, source or filter; to empty the whole "
                "collection, pass filter='id != \"\"'"
            )
        if filter is not None and not filter.strip():
            raise ConfigError(
                "invalid filter '': an empty filter matches every row; pass a "
                "Milvus boolean expression"
            )
        conditions = [combine(filter)] if filter is not None else []
        if source is not None:
            conditions.append(f"source == {quote_string(source)}")
        self.store.require()
        with _user_filter_errors(filter):
            return self._delete_matching(ids, conditions)

    def _delete_matching(
        self, ids: Iterable[str] | str | None, conditions: list[str]
    ) -> int:
        from .filters import quote_string

        if ids is None:
            return self._delete_where(" and ".join(conditions))

        doc_ids = [ids] if isinstance(ids, str) else list(ids)
        deleted = 0
        for start in range(0, len(doc_ids), IDS_PER_EXPRESSION):
            part = doc_ids[start : start + IDS_PER_EXPRESSION]
            values = ", ".join(quote_string(str(value)) for value in part)
            expression = " and ".join([f"doc_id in [{values}]", *conditions])
            deleted += self._delete_where(expression)
        return deleted

    def _delete_where(self, expression: str) -> int:
        # NOTE: the count and the delete are two Milvus calls, so rows written
        # between them by another client are deleted without being counted.
        count = self.store.count(expression)
        if count:
            self.store.delete_where(expression)
        logger.info("deleted %d rows matching %s", count, expression)
        return count


@contextlib.contextmanager
def _user_filter_errors(user_filter: str | None) -> Iterator[None]:
    """Word a backend's expression error with the filter as the user wrote it.

    The store receives the filter combined with other conditions, in parentheses.
    """
    from .errors import FilterError
    from .store import filter_error

    try:
        yield
    except FilterError as exc:
        reason = getattr(exc, "reason", None)
        if user_filter is None or reason is None:
            raise
        raise filter_error(user_filter.strip(), reason) from exc


# Fields that a record passed to ingest_records() may have.
RECORD_FIELDS = ("text", "id", "title", "source", "metadata")


def document_from_record(
    record: Mapping[str, Any] | object,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Document:
    """Build a Document from a dict, or an object with the same attributes.

    ``text`` is required. ``id`` defaults to the sha256 hex digest of the text and
    ``source`` to the id. Keys of ``extra_metadata`` override the record's own
    metadata. Raises ConfigError naming the field that is missing or invalid.
    """
    if not isinstance(record, Mapping) and not hasattr(record, "text"):
        raise ConfigError(
            f"invalid record {record!r:.80}: use a dict with a 'text' key, or an "
            "object with a 'text' attribute"
        )
    values = {name: _record_value(record, name) for name in RECORD_FIELDS}
    text = values["text"]
    if not isinstance(text, str):
        raise ConfigError(
            f"invalid record text {text!r:.80}: every record needs a string 'text'"
        )
    content_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    doc_id = values["id"]
    if doc_id is None:
        doc_id = content_hash
    elif isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    elif not isinstance(doc_id, str) or not doc_id:
        raise ConfigError(
            f"invalid record id {doc_id!r}: use a non-empty string or an integer, "
            "or leave it out to use the hash of the text"
        )
    for name in ("title", "source"):
        if values[name] is not None and not isinstance(values[name], str):
            raise ConfigError(f"invalid record {name} {values[name]!r}: use a string")
    metadata = values["metadata"]
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise ConfigError(
            f"invalid record metadata {metadata!r}: use a dict of JSON values"
        )
    merged = {**metadata, **(extra_metadata or {})}
    return Document(
        id=doc_id,
        source=values["source"] or doc_id,
        title=values["title"] or "",
        text=text,
        content_hash=content_hash,
        metadata=merged,
    )


def _record_value(record: Mapping[str, Any] | object, name: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _documents_from_records(
    records: Iterable[Mapping[str, Any] | object],
    extra_metadata: Mapping[str, Any] | None,
    on_skip: Callable[[SkippedInput], None],
) -> Iterator[Document]:
    from .loaders import SkippedInput

    for index, record in enumerate(records):
        try:
            yield document_from_record(record, extra_metadata)
        except ConfigError as exc:
            on_skip(SkippedInput(f"records[{index}]", str(exc)))


# Shortest excerpt worth keeping when format_context() cuts the last block.
MIN_EXCERPT_CHARS = 80


def format_context(hits: Sequence[Hit], *, max_chars: int | None = None) -> str:
    """Format hits as numbered context blocks that an answer can cite by number.

    Each block starts with ``[n]``, the title and the source, then the chunk
    text. With ``max_chars`` the result is at most that many characters long:
    the first block that does not fit is cut at a word boundary and ends with
    "...", when at least ``MIN_EXCERPT_CHARS`` of its text fit, and the blocks
    after it are left out.
    """
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ConfigError(f"invalid max_chars {max_chars!r}: use a positive integer")
    blocks: list[str] = []
    used = 0
    for number, hit in enumerate(hits, start=1):
        header = _context_header(number, hit)
        text = hit.text.strip()
        separator = 2 if blocks else 0
        block = f"{header}\n{text}"
        if max_chars is None or used + separator + len(block) <= max_chars:
            blocks.append(block)
            used += separator + len(block)
            continue
        room = max_chars - used - separator - len(header) - 1
        excerpt = _cut_at_word(text, room)
        if len(excerpt) >= MIN_EXCERPT_CHARS:
            blocks.append(f"{header}\n{excerpt}")
        break
    return "\n\n".join(blocks)


def _context_header(number: int, hit: Hit) -> str:
    if hit.title and hit.title != hit.source:
        return f"[{number}] {hit.title} ({hit.source})"
    return f"[{number}] {hit.source}"


def _cut_at_word(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, ending in "..." at a space."""
    ellipsis = "..."
    if max_chars <= len(ellipsis):
        return ""
    head = text[: max_chars - len(ellipsis)]
    space = head.rfind(" ")
    if space > 0:
        head = head[:space]
    return head.rstrip() + ellipsis


__all__ = ["SemanticSearch", "document_from_record", "format_context"]
