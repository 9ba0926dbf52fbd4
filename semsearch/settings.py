"""Settings resolved once: explicit values, then environment variables, then defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_URI = "./semsearch.db"
DEFAULT_COLLECTION = "semsearch"
DEFAULT_CHUNK_OVERLAP = 32

ENVIRONMENT_VARIABLES = {
    "uri": "SEMSEARCH_URI",
    "token": "SEMSEARCH_TOKEN",
    "collection": "SEMSEARCH_COLLECTION",
    "model": "SEMSEARCH_MODEL",
    "device": "SEMSEARCH_DEVICE",
}


@dataclass(frozen=True)
class Settings:
    """Connection and model settings shared by the CLI, the API and the server."""

    uri: str = DEFAULT_URI
    collection: str = DEFAULT_COLLECTION
    model: str | None = None
    device: str = "auto"
    chunk_size: int | None = None
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    batch_tokens: int = 16_384
    token: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> Settings:
        """Build settings from explicit values (None means unset), then the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT_VARIABLES.items():
            if environ.get(variable):
                values[name] = environ[variable]
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
