"""semsearch: semantic search over Milvus with a local sentence encoder."""

from __future__ import annotations

import logging

from .api import SemanticSearch, format_context
from .errors import SemsearchError
from .types import Chunk, Document, Hit

__all__ = [
    "Chunk",
    "Document",
    "Hit",
    "SemanticSearch",
    "SemsearchError",
    "format_context",
]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
