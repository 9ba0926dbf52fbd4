"""Settings resolved once: explicit values, then environment variables, then defaults."""

from __future__ import annotations

import json
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
    "backend": "SEMSEARCH_BACKEND",
    "precision": "SEMSEARCH_PRECISION",
    "index_type": "SEMSEARCH_INDEX_TYPE",
    "index_params": "SEMSEARCH_INDEX_PARAMS",
}


@dataclass(frozen=True)
class Settings:
    """Connection and model settings shared by the CLI, the API and the server."""

    uri: str = DEFAULT_URI
    collection: str = DEFAULT_COLLECTION
    model: str | None = None
    device: str = "auto"
    # Encoder runtime ("auto", "torch" or "onnx") and precision ("auto", "fp32",
    # "fp16", "bf16" or "int8"); the Encoder docstring describes what "auto" picks.
    backend: str = "auto"
    precision: str = "auto"
    chunk_size: int | None = None
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    # Padded tokens per encoder batch; None picks the encoder's default for
    # the device and backend.
    batch_tokens: int | None = None
    token: str | None = field(default=None, repr=False)
    # The vector index of collections semsearch creates; None picks FLAT on
    # Milvus Lite and HNSW on a server. index_params are its build parameters.
    index_type: str | None = None
    index_params: Mapping[str, Any] | None = None

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
        if isinstance(values.get("index_params"), str):
            values["index_params"] = parse_index_params(values["index_params"])
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_index_params(text: str) -> dict[str, Any]:
    """Parse index build parameters given as a JSON object, e.g. '{"M": 32}'."""
    from .errors import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid index params {text!r}: {exc.msg}. Pass a JSON object such "
            'as \'{"M": 16, "efConstruction": 200}\''
        ) from exc
    if not isinstance(value, dict):
        raise ConfigError(
            f"invalid index params {text!r}: expected a JSON object such as "
            '\'{"nlist": 1024}\''
        )
    return value
