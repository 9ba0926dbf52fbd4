"""The ingest pipeline: documents to chunks to vectors to Milvus rows.

Three stages run concurrently, connected by bounded queues so memory stays flat
and the slowest stage sets the pace:

1. a loader thread reads and chunks documents,
2. the calling thread checks which documents changed and encodes their chunks,
3. a writer thread upserts rows and then removes chunks a document no longer has.

A document counts as stored only when every one of its chunks carries its current
content hash and chunk count, so an interrupted run is finished by the next one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .store import (
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

_DONE = object()


@dataclass
class IngestReport:
    """Counts for one ingest run."""

    documents: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    chunks: int = 0
    tokens: int = 0
    skipped: list[SkippedInput] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "chunks": self.chunks,
            "tokens": self.tokens,
            "skipped": [
                {"source": s.source, "line": s.line, "reason": s.reason}
                for s in self.skipped
            ],
            "seconds": round(self.seconds, 3),
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
    document: Document, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]
) -> list[dict[str, Any]]:
    """Build the Milvus rows for one document's chunks."""
    title = fit_bytes(document.title, TITLE_MAX_BYTES)
    rows = []
    for chunk, vector in zip(chunks, vectors, strict=True):
        metadata = dict(document.metadata)
        if chunk.headings:
            metadata["headings"] = list(chunk.headings)
        rows.append(
            {
                "id": chunk_id(document.id, chunk.ordinal),
                "vector": [float(x) for x in vector],
                "text": chunk.text,
                "doc_id": document.id,
                "ordinal": chunk.ordinal,
                "chunk_count": len(chunks),
                "char_start": chunk.start,
                "char_end": chunk.end,
                "source": document.source,
                "title": title,
                "doc_hash": document.content_hash,
                "metadata": metadata,
            }
        )
    return rows


def check_storable(document: Document) -> str | None:
    """Return why ``document`` cannot be stored, or None when it can."""
    if len(document.id.encode("utf-8")) > DOC_ID_MAX_BYTES:
        return f"document id is longer than {DOC_ID_MAX_BYTES} bytes; shorten the id"
    if len(document.source.encode("utf-8")) > SOURCE_MAX_BYTES:
        return f"source path is longer than {SOURCE_MAX_BYTES} bytes"
    try:
        encoded = json.dumps(document.metadata)
    except (TypeError, ValueError) as exc:
        return f"metadata is not JSON-serialisable: {exc}"
    if len(encoded.encode("utf-8")) > METADATA_MAX_BYTES:
        return f"metadata is larger than {METADATA_MAX_BYTES} bytes as JSON"
    return None


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

    def run(
        self,
        documents: Iterable[Document],
        report: IngestReport | None = None,
    ) -> IngestReport:
        """Ingest ``documents``; skipped inputs are appended to ``report.skipped``."""
        from .loaders import SkippedInput

        report = report or IngestReport()
        started = time.perf_counter()
        self.store.ensure_collection(self.encoder.fingerprint)

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
        try:
            for batch in self._batches(prepared, failure):
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
                work = self._changed(fresh, report)
                if work:
                    writes.put(self._encode(work, report))
                if failure:
                    break
        finally:
            writes.put(_DONE)
            writer.join()
            loader.join(timeout=1)
        if failure:
            raise failure[0]
        report.seconds = time.perf_counter() - started
        return report

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
        stored = self.store.stored_documents([item.document.id for item in batch])
        work = []
        for item in batch:
            report.documents += 1
            previous = stored.get(item.document.id)
            if previous is None:
                report.new += 1
            elif previous.is_complete(item.document.content_hash):
                report.unchanged += 1
                continue
            else:
                report.changed += 1
            work.append(item)
        return work

    def _encode(
        self, work: list[_Prepared], report: IngestReport
    ) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
        texts = [chunk.text for item in work for chunk in item.chunks]
        vectors = self.encoder.encode_passages(texts)
        report.tokens += sum(self.encoder.count_tokens(text) for text in texts)
        rows: list[dict[str, Any]] = []
        offset = 0
        for item in work:
            count = len(item.chunks)
            rows.extend(
                chunk_rows(item.document, item.chunks, vectors[offset : offset + count])
            )
            offset += count
        completed = [(item.document.id, len(item.chunks)) for item in work]
        return rows, completed

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
            rows, completed = item
            try:
                self.store.upsert(rows)
                for doc_id, count in completed:
                    self.store.delete_stale_chunks(doc_id, count)
            except BaseException as exc:  # handed to the calling thread
                failure.append(exc)
                continue
            report.chunks += len(rows)
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
