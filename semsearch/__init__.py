"""semsearch: semantic search over Milvus with a local sentence encoder."""

from __future__ import annotations

import logging

from .api import SemanticSearch, document_from_record, format_context
from .errors import (
    CollectionNotFoundError,
    ConfigError,
    FilterError,
    SemsearchError,
    StoreError,
)
from .ingest import IngestReport
from .types import Chunk, Document, Hit

__all__ = [
    "Chunk",
    "CollectionNotFoundError",
    "ConfigError",
    "Document",
    "FilterError",
    "Hit",
    "IngestReport",
    "SemanticSearch",
    "SemsearchError",
    "StoreError",
    "document_from_record",
    "format_context",
]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
