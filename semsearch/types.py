"""Value types that flow through the pipeline: documents, chunks and hits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """A source file or record, decoded to text, with its metadata.

    ``id`` is stable across runs: the source path relative to the ingest root for
    files, and ``<source>#<record id or line>`` for records. ``content_hash`` is the
    sha256 hex digest of ``text``.
    """

    id: str
    source: str
    title: str
    text: str
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text that fits the model's input limit.

    ``text == document.text[start:end]`` always holds. ``headings`` is the Markdown
    heading path that encloses the chunk's start (empty for other formats).
    """

    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int
    headings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    """A stored chunk returned by a search, with its score.

    ``score`` is a similarity: higher is more similar. For dense search it is the
    cosine similarity of the query and chunk embeddings.
    """

    id: str
    score: float
    text: str
    doc_id: str
    chunk: int
    start: int
    end: int
    source: str
    title: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "text": self.text,
            "source": self.source,
            "title": self.title,
            "doc_id": self.doc_id,
            "chunk": self.chunk,
            "start": self.start,
            "end": self.end,
            "metadata": self.metadata,
        }
