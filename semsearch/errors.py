"""The exception hierarchy. Every message names the offending value and the fix."""

from __future__ import annotations


class SemsearchError(Exception):
    """Base class for expected failures; the CLI prints these without a traceback."""


class ConfigError(SemsearchError, ValueError):
    """An option or setting has an invalid value."""


class ModelNotFoundError(SemsearchError):
    """A model id or path cannot be resolved to local files."""


class ModelIntegrityError(SemsearchError):
    """Model weights on disk do not match their expected hash."""


class ModelMismatchError(SemsearchError):
    """A collection was written with a different model than the one in use."""


class LoadError(SemsearchError):
    """A file or record cannot be read into a document."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        self.source = source
        self.reason = reason
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


class StoreError(SemsearchError):
    """The vector store rejected an operation or cannot be reached."""

    def __init__(
        self, message: str, code: int | None = None, *, retryable: bool = False
    ) -> None:
        self.code = code
        # True when the failure was transient (connection, rate limit) and
        # retries ran out, rather than the backend rejecting the request.
        self.retryable = retryable
        super().__init__(message)


class FilterError(SemsearchError, ValueError):
    """A filter expression or ``--where`` condition is invalid."""


class CollectionNotFoundError(StoreError):
    """The named collection does not exist on the backend."""


class FeatureUnavailableError(StoreError):
    """The backend lacks a feature the request needs, such as BM25 full-text search."""


class BackendError(SemsearchError):
    """An encoder backend cannot be prepared, such as a failed ONNX export."""


class LiteFileInUseError(StoreError):
    """A Milvus Lite file is open in another process, which holds its lock."""
