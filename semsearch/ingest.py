"""The ingest pipeline: documents to chunks to vectors to Milvus rows.

Three stages run concurrently, connected by bounded queues so memory stays flat
and the slowest stage sets the pace:

1. a loader thread reads and chunks documents,
2. the calling thread checks which documents changed and encodes their chunks,
3. a writer thread upserts rows and then removes chunks a document no longer has.

A document counts as stored only when every one of its chunks carries its current
content hash and chunk count, so an interrupted run is finished by the next one.
Each row also stores the sha256 of its chunk text: when a changed document keeps
some chunks word for word, their stored vectors are reused instead of embedded.
docs/sync.md describes the sync rules, pruning and the dry run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .store import (
    CHUNK_HASH_FIELD,
    DOC_ID_MAX_BYTES,
    SOURCE_MAX_BYTES,
    TEXT_MAX_BYTES,
    TITLE_MAX_BYTES,
    chunk_id,
    fit_bytes,
)
from .types import Chunk, Document

if TYPE_CHECKING:
    from .chunking import Chunker
    from .encoder import Encoder
    from .loaders import SkippedInput
    from .store import MilvusStore

logger = logging.getLogger(__name__)

# Milvus limits one JSON value to 64 KiB; metadata larger than this is rejected.
METADATA_MAX_BYTES = 65_000

# Metadata key holding the absolute path a document was loaded from (the folder
# or file given to ingest). Pruning only considers documents under its roots.
ROOT_KEY = "ingest_root"

_DONE = object()


@dataclass
class IngestReport:
    """Counts for one ingest run.

    ``new``, ``changed``, ``unchanged`` and ``deleted`` count documents; in a dry
    run they are the plan, and nothing was written. ``chunks`` counts rows
    written, of which ``embedded`` were encoded and ``reused`` took the stored
    vector of an identical chunk. ``tokens`` counts the tokens the model read,
    with the special tokens and any passage prefix.
    """

    documents: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks: int = 0
    embedded: int = 0
    reused: int = 0
    tokens: int = 0
    skipped: list[SkippedInput] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "chunks": self.chunks,
            "embedded": self.embedded,
            "reused": self.reused,
            "tokens": self.tokens,
            "skipped": [
                {"source": s.source, "line": s.line, "reason": s.reason}
                for s in self.skipped
            ],
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True)
class Progress:
    """A snapshot sent to the progress callback after each written batch."""

    documents: int
    chunks: int
    tokens: int
    skipped: int
    elapsed: float


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Prepared:
    document: Document
    chunks: list[Chunk]
    stored: bool = False


@dataclass
class _DocumentRows:
    """The rows of one document, written together or reported together."""

    doc_id: str
    source: str
    rows: list[dict[str, Any]]
    # False for a document with no rows stored before this run, which has no
    # stale chunks to delete.
    stored: bool = True


def chunk_hash(text: str) -> str:
    """Return the sha256 hex digest of a chunk's UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_oversized(
    chunks: Sequence[Chunk], max_bytes: int = TEXT_MAX_BYTES
) -> list[Chunk]:
    """Split chunks whose UTF-8 text exceeds ``max_bytes`` and renumber all of them.

    A chunk within the token limit can still pass Milvus' byte limit, for example
    when long words each become one unknown-word token. Pieces keep exact spans.
    """
    result: list[Chunk] = []
    for chunk in chunks:
        if len(chunk.text.encode("utf-8")) <= max_bytes:
            pieces = [(chunk.start, chunk.text)]
        else:
            pieces = list(_byte_pieces(chunk.start, chunk.text, max_bytes))
        for start, text in pieces:
            result.append(
                Chunk(
                    doc_id=chunk.doc_id,
                    ordinal=len(result),
                    text=text,
                    start=start,
                    end=start + len(text),
                    headings=chunk.headings,
                )
            )
    return result


def _byte_pieces(start: int, text: str, max_bytes: int) -> Iterator[tuple[int, str]]:
    offset = 0
    while offset < len(text):
        piece = fit_bytes(text[offset:], max_bytes)
        cut = text.rfind(" ", offset, offset + len(piece))
        if offset + len(piece) < len(text) and cut > offset:
            piece = text[offset : cut + 1]
        yield start + offset, piece
        offset += len(piece)


def chunk_rows(
    document: Document,
    chunks: Sequence[Chunk],
    vectors: Sequence[Sequence[float]],
    doc_hash: str | None = None,
) -> list[dict[str, Any]]:
    """Build the Milvus rows for one document's chunks.

    ``doc_hash`` is the value the sync compares; it defaults to the text hash.
    """
    title = fit_bytes(document.title, TITLE_MAX_BYTES)
    rows = []
    for chunk, vector in zip(chunks, vectors, strict=True):
        metadata = dict(document.metadata)
        if chunk.headings:
            metadata["headings"] = list(chunk.headings)
        rows.append(
            {
                "id": chunk_id(document.id, chunk.ordinal),
                "vector": _as_floats(vector),
                "text": chunk.text,
                "doc_id": document.id,
                "ordinal": chunk.ordinal,
                "chunk_count": len(chunks),
                "char_start": chunk.start,
                "char_end": chunk.end,
                "source": document.source,
                "title": title,
                "doc_hash": doc_hash or document.content_hash,
                CHUNK_HASH_FIELD: chunk_hash(chunk.text),
                "metadata": metadata,
            }
        )
    return rows


def _as_floats(vector: Sequence[float]) -> list[float]:
    # ndarray.tolist() converts a row to Python floats in C, far faster than
    # one float() call per element.
    tolist = getattr(vector, "tolist", None)
    return tolist() if tolist is not None else [float(x) for x in vector]


def check_storable(document: Document) -> str | None:
    """Return why ``document`` cannot be stored, or None when it can."""
    if len(document.id.encode("utf-8")) > DOC_ID_MAX_BYTES:
        return f"document id is longer than {DOC_ID_MAX_BYTES} bytes; shorten the id"
    if len(document.source.encode("utf-8")) > SOURCE_MAX_BYTES:
        return f"source path is longer than {SOURCE_MAX_BYTES} bytes"
    for key, value in document.metadata.items():
        try:
            # NaN and infinity are not JSON, and Milvus rejects them.
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return (
                f"metadata field {key!r} is not valid JSON ({exc}); convert it to "
                "a string, number, bool, list or object, or drop it"
            )
    encoded = json.dumps(document.metadata)
    if len(encoded.encode("utf-8")) > METADATA_MAX_BYTES:
        return f"metadata is larger than {METADATA_MAX_BYTES} bytes as JSON"
    return None


def plan_prune(
    stored: Iterable[tuple[str, str, str]],
    seen_ids: Collection[str],
    listed: Collection[tuple[str, str]],
    skipped_sources: Collection[str],
) -> list[str]:
    """Return the ids of stored documents that a prune deletes.

    ``stored`` contains ``(doc_id, source, root)`` of documents recorded under the
    roots of this run, ``listed`` the ``(root, source)`` pairs that this run
    loaded documents from. A document goes when this run did not produce it and
    either its source file no longer exists, or the file was loaded and no
    longer contains it (a removed record). Documents of files that exist but
    were excluded, unsupported or skipped this run are kept.
    """
    doomed: list[str] = []
    for doc_id, source, root in stored:
        if doc_id in seen_ids or source in skipped_sources:
            continue
        root_path = Path(root)
        path = root_path if root_path.is_file() else root_path / source
        if not path.exists() or (root, source) in listed:
            doomed.append(doc_id)
    return doomed


class Ingester:
    """Sync documents into a collection: embed what changed, skip the rest."""

    def __init__(
        self,
        encoder: Encoder,
        store: MilvusStore,
        chunker: Chunker,
        *,
        batch_chunks: int = 256,
        queue_batches: int = 4,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.chunker = chunker
        self.batch_chunks = batch_chunks
        self.queue_batches = queue_batches
        self.on_progress = on_progress
        self._has_collection = False
        self._nothing_stored = False

    def run(
        self,
        documents: Iterable[Document],
        report: IngestReport | None = None,
        *,
        prune_roots: Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> IngestReport:
        """Ingest ``documents``; skipped inputs are appended to ``report.skipped``.

        With ``prune_roots``, stored documents recorded under those roots (the
        ``ingest_root`` metadata) that this run no longer finds are deleted, as
        ``plan_prune`` decides. With ``dry_run``, documents are loaded, chunked
        and compared but nothing is embedded or written, and no collection is
        created; the report contains the plan.
        """
        report = report or IngestReport()
        report.dry_run = dry_run
        started = time.perf_counter()
        self._has_collection = self._open(dry_run)
        logger.info(
            "%s collection %s",
            "comparing with" if dry_run else "syncing into",
            self.store.collection,
        )

        prepared: queue.Queue[Any] = queue.Queue(maxsize=self.queue_batches)
        writes: queue.Queue[Any] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []
        loader = threading.Thread(
            target=self._load, args=(documents, prepared, report, failure), daemon=True
        )
        writer = threading.Thread(
            target=self._write, args=(writes, report, started, failure), daemon=True
        )
        loader.start()
        writer.start()
        seen: set[str] = set()
        listed: set[tuple[str, str]] = set()
        try:
            for batch in self._batches(prepared, failure):
                fresh = self._first_of_each_id(batch, seen, report)
                for item in fresh:
                    root = item.document.metadata.get(ROOT_KEY)
                    if isinstance(root, str):
                        listed.add((root, item.document.source))
                work = self._changed(fresh, report)
                if work and not dry_run:
                    writes.put(self._encode(work, report))
                if failure:
                    break
        finally:
            writes.put(_DONE)
            writer.join()
            loader.join(timeout=1)
        if failure:
            raise failure[0]
        if prune_roots is not None:
            self._prune(prune_roots, seen, listed, report, dry_run)
        report.seconds = time.perf_counter() - started
        return report

    def _open(self, dry_run: bool) -> bool:
        """Prepare the collection; return whether it exists.

        A dry run only checks an existing collection's model and creates none.
        """
        if not dry_run:
            created = self.store.ensure_collection(self.encoder.fingerprint)
            # Nothing can be stored yet in an empty collection, so the run skips
            # the per-batch lookups, which cost Milvus Lite a scan of its
            # unflushed rows each.
            # NOTE: two processes ingesting the same new document into one new
            # collection at once may leave stale chunks of the shorter version,
            # because neither looks the other's rows up.
            self._nothing_stored = created or self.store.count() == 0
            return True
        if not self.store.exists():
            return False
        self.store.require()
        self.store.check_fingerprint(self.encoder.fingerprint)
        return True

    def _first_of_each_id(
        self, batch: list[_Prepared], seen: set[str], report: IngestReport
    ) -> list[_Prepared]:
        from .loaders import SkippedInput

        fresh = []
        for item in batch:
            if item.document.id in seen:
                report.skipped.append(
                    SkippedInput(
                        item.document.source,
                        f"duplicate document id {item.document.id!r}; "
                        "only the first one was ingested",
                    )
                )
                continue
            seen.add(item.document.id)
            fresh.append(item)
        return fresh

    def _prune(
        self,
        roots: Sequence[str],
        seen: set[str],
        listed: set[tuple[str, str]],
        report: IngestReport,
        dry_run: bool,
    ) -> None:
        from .filters import quote_string

        if not self._has_collection or not roots:
            return
        stored: dict[str, tuple[str, str, str]] = {}
        for root in roots:
            expression = f'metadata["{ROOT_KEY}"] == {quote_string(root)}'
            for row in self.store.query(expression, ["doc_id", "source"]):
                stored[row["doc_id"]] = (row["doc_id"], row["source"], root)
        skipped_sources = {skipped.source for skipped in report.skipped}
        doomed = plan_prune(stored.values(), seen, listed, skipped_sources)
        report.deleted = len(doomed)
        if doomed and not dry_run:
            logger.info("pruning %d documents no longer under %s", len(doomed), roots)
            self.store.delete_documents(doomed)

    def sync_hash(self, document: Document) -> str:
        """Return the hash that decides whether a stored document is up to date.

        It covers the text, the metadata and the chunking settings, so a changed
        manifest entry or a new --chunk-size rewrites the document's rows. Chunks
        whose text did not change keep their stored vectors.
        """
        settings = (
            getattr(self.chunker, "max_tokens", None),
            getattr(self.chunker, "overlap", None),
        )
        payload = json.dumps(
            [document.content_hash, document.metadata, settings],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # -- stage 1: load and chunk --------------------------------------------

    def _load(
        self,
        documents: Iterable[Document],
        out: queue.Queue[Any],
        report: IngestReport,
        failure: list[BaseException],
    ) -> None:
        from .loaders import SkippedInput

        try:
            for document in documents:
                problem = check_storable(document)
                if problem:
                    report.skipped.append(SkippedInput(document.source, problem))
                    continue
                chunks = split_oversized(self.chunker.chunk_document(document))
                if not chunks:
                    report.skipped.append(
                        SkippedInput(document.source, "document has no visible text")
                    )
                    continue
                out.put(_Prepared(document, chunks))
        except BaseException as exc:  # handed to the calling thread
            failure.append(exc)
        finally:
            out.put(_DONE)

    def _batches(
        self, source: queue.Queue[Any], failure: list[BaseException]
    ) -> Iterator[list[_Prepared]]:
        batch: list[_Prepared] = []
        size = 0
        while True:
            item = source.get()
            if item is _DONE:
                break
            batch.append(item)
            size += len(item.chunks)
            if size >= self.batch_chunks:
                yield batch
                batch, size = [], 0
        if batch and not failure:
            yield batch

    # -- stage 2: compare and encode ----------------------------------------

    def _changed(self, batch: list[_Prepared], report: IngestReport) -> list[_Prepared]:
        stored = {}
        if self._has_collection and not self._nothing_stored:
            stored = self.store.stored_documents([item.document.id for item in batch])
        work = []
        for item in batch:
            report.documents += 1
            previous = stored.get(item.document.id)
            if previous is None:
                report.new += 1
            elif previous.is_complete(self.sync_hash(item.document)):
                report.unchanged += 1
                continue
            else:
                report.changed += 1
                item.stored = True
            work.append(item)
        return work

    def _encode(
        self, work: list[_Prepared], report: IngestReport
    ) -> list[_DocumentRows]:
        """Embed the chunks that have no stored twin and build every row.

        A chunk of a changed document reuses the stored vector of a chunk of the
        same document with the same text hash, because the vector depends only
        on the text and the model, which the fingerprint check keeps fixed.
        """
        reusable = self.store.chunk_vectors(
            [item.document.id for item in work if item.stored]
        )
        vectors: list[list[float] | None] = []
        texts: list[str] = []
        for item in work:
            stored = reusable.get(item.document.id, {})
            for chunk in item.chunks:
                vector = stored.get(chunk_hash(chunk.text))
                vectors.append(vector)
                if vector is None:
                    texts.append(chunk.text)
        embeddings, tokens = self.encoder.encode_counted(texts, kind="passage")
        encoded = iter(embeddings)
        report.embedded += len(texts)
        report.reused += len(vectors) - len(texts)
        report.tokens += tokens

        result: list[_DocumentRows] = []
        offset = 0
        for item in work:
            count = len(item.chunks)
            own = [
                next(encoded) if vector is None else vector
                for vector in vectors[offset : offset + count]
            ]
            rows = chunk_rows(
                item.document, item.chunks, own, self.sync_hash(item.document)
            )
            result.append(
                _DocumentRows(
                    item.document.id, item.document.source, rows, stored=item.stored
                )
            )
            offset += count
        return result

    # -- stage 3: write -----------------------------------------------------

    def _write(
        self,
        source: queue.Queue[Any],
        report: IngestReport,
        started: float,
        failure: list[BaseException],
    ) -> None:
        while True:
            item = source.get()
            if item is _DONE:
                return
            if failure:
                continue
            try:
                written = self._write_documents(item, report)
            except BaseException as exc:  # handed to the calling thread
                failure.append(exc)
                continue
            report.chunks += written
            self.store.flush_if_due()
            logger.info(
                "wrote %d rows of %d documents (%d in total)",
                written,
                len(item),
                report.chunks,
            )
            if self.on_progress:
                self.on_progress(
                    Progress(
                        documents=report.documents,
                        chunks=report.chunks,
                        tokens=report.tokens,
                        skipped=len(report.skipped),
                        elapsed=time.perf_counter() - started,
                    )
                )

    def _write_documents(
        self, documents: list[_DocumentRows], report: IngestReport
    ) -> int:
        """Upsert the rows of ``documents``, then delete their stale chunks.

        When the backend rejects a batch, each document is written alone, so one
        bad document costs only itself. When retries of a transient error run
        out, every document of the batch is reported and the run goes on. A
        document that failed keeps its old rows, which do not look complete, so
        the next run writes it again. Returns the number of rows written.
        """
        rows = [row for document in documents for row in document.rows]
        try:
            self.store.upsert(rows)
        except StoreError as exc:
            if exc.retryable or len(documents) == 1:
                for document in documents:
                    self._report_failed(document, exc, report)
                return 0
            return sum(self._write_documents([doc], report) for doc in documents)
        # Only documents stored before can have chunks past their new count.
        # Milvus Lite scans the collection for each delete, so new documents
        # skip it and the rest share one delete call.
        rewritten = [document for document in documents if document.stored]
        if rewritten:
            try:
                self.store.delete_stale_chunks_many(
                    [(document.doc_id, len(document.rows)) for document in rewritten]
                )
            except StoreError as exc:
                for document in rewritten:
                    self._report_failed(document, exc, report)
        return len(rows)

    def _report_failed(
        self, document: _DocumentRows, exc: StoreError, report: IngestReport
    ) -> None:
        from .loaders import SkippedInput

        logger.error("failed to write document %s: %s", document.doc_id, exc)
        report.skipped.append(
            SkippedInput(
                document.source,
                f"document {document.doc_id!r} was not written: {exc}",
            )
        )
