"""The HTTP JSON API: search, ingest and delete over one ``SemanticSearch`` engine.

Needs the ``server`` extra (FastAPI and uvicorn). ``create_app()`` builds the
app and ``semsearch serve`` runs it with uvicorn. The model loads once at start,
and concurrent requests share it and the Milvus connection: the store runs one
Milvus call at a time and the encoder one batch at a time.

With micro-batching on, concurrent ``/search`` requests with the same options
are served together: their queries are embedded in one encoder call and
searched in one Milvus call.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .errors import (
    CollectionNotFoundError,
    ConfigError,
    FilterError,
    LiteFileInUseError,
    ModelMismatchError,
    SemsearchError,
    StoreError,
)
from .store import redact_uri

if TYPE_CHECKING:
    from .api import SemanticSearch
    from .types import Hit

logger = logging.getLogger(__name__)

MAX_K = 1000
MAX_BATCH_QUERIES = 256
MAX_DOCUMENTS_PER_REQUEST = 10_000

# How long the first query of a micro-batch waits for others, and the largest
# batch. 5 ms is small next to one search, about 70 ms for embedding and Milvus
# on the 2-core machine of docs/benchmarks-server.md.
BATCH_WAIT_S = 0.005
BATCH_MAX_QUERIES = 64

# Paths that need no API key: the liveness probe and the API schema.
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/redoc"})

T = TypeVar("T")
Query = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
WhereValue = bool | int | float | str


# -- request and response models ---------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchOptionsModel(_Request):
    """Options shared by single and batch search requests."""

    k: int = Field(10, ge=1, le=MAX_K, description="Number of hits per query.")
    filter: str | None = Field(None, description="Milvus boolean expression.")
    where: dict[str, WhereValue] | None = Field(
        None, description="Equality conditions on fields or metadata keys."
    )
    mode: Literal["dense", "bm25", "hybrid"] = "dense"
    min_score: float | None = Field(None, description="Drop hits scoring below this.")


class SearchRequest(SearchOptionsModel):
    query: Query


class BatchSearchRequest(SearchOptionsModel):
    queries: list[Query] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class HitModel(BaseModel):
    """A chunk with its score; higher scores are more similar."""

    id: str
    score: float
    text: str
    source: str
    title: str
    doc_id: str
    chunk: int
    start: int
    end: int
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[HitModel]


class BatchSearchResponse(BaseModel):
    results: list[list[HitModel]]


class DocumentModel(_Request):
    """A record to ingest; ``id`` defaults to the sha256 of the text."""

    text: str = Field(min_length=1)
    id: str | None = Field(None, min_length=1)
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(_Request):
    documents: list[DocumentModel] = Field(
        min_length=1, max_length=MAX_DOCUMENTS_PER_REQUEST
    )


class SkippedModel(BaseModel):
    source: str
    line: int | None = None
    reason: str


class IngestResponse(BaseModel):
    """The ingest report; counts are documents, except ``chunks`` and ``tokens``."""

    model_config = ConfigDict(extra="allow")

    documents: int
    new: int
    changed: int
    unchanged: int
    chunks: int
    tokens: int
    skipped: list[SkippedModel]
    seconds: float


class DeleteRequest(_Request):
    """Rows to delete; a row must match every condition given."""

    ids: list[str] | None = Field(None, description="Document ids (doc_id).")
    source: str | None = None
    filter: str | None = Field(None, min_length=1, pattern=r"\S")

    @model_validator(mode="after")
    def _require_condition(self) -> DeleteRequest:
        if self.ids is None and self.source is None and self.filter is None:
            raise ValueError("give at least one of ids, source or filter")
        return self


class DeleteResponse(BaseModel):
    deleted: int


class StatsResponse(BaseModel):
    collection: str
    uri: str
    rows: int
    documents: int
    model: dict[str, Any] | None


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ErrorResponse(BaseModel):
    error: str


# -- micro-batching ------------------------------------------------------------


class QueryBatcher(Generic[T]):
    """A queue that runs the queries of concurrent requests in shared calls.

    ``run`` takes a list of queries and returns one result per query, in order.
    The first query waits ``max_wait_s`` for others. While a call runs, new
    queries queue and go into the next call without waiting, so one call runs
    at a time. Use it from one event loop only.
    """

    def __init__(
        self,
        run: Callable[[list[str]], Sequence[T]],
        *,
        max_wait_s: float = BATCH_WAIT_S,
        max_batch: int = BATCH_MAX_QUERIES,
    ) -> None:
        self._run = run
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[T]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.calls = 0

    @property
    def idle(self) -> bool:
        """True when no query is queued or running."""
        return not self._pending and (self._worker is None or self._worker.done())

    async def submit(self, query: str) -> T:
        """Return the result for ``query``, computed in a shared call."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(self.max_wait_s)
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            live = [(query, future) for query, future in batch if not future.done()]
            if not live:
                continue
            self.calls += 1
            try:
                results = await run_in_threadpool(
                    self._run, [query for query, _ in live]
                )
            except Exception as exc:  # noqa: BLE001 (handed to each waiting request)
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)


class SearchBatcher:
    """Micro-batching for ``/search``: one batcher per set of search options.

    Concurrent requests with the same options (k, filter, where, mode,
    min_score) are served by one ``search_many()`` call, so their queries are
    embedded in one encoder call and searched in one Milvus call.
    """

    def __init__(self, engine: SemanticSearch, *, max_idle_batchers: int = 256) -> None:
        self.engine = engine
        self.max_idle_batchers = max_idle_batchers
        self._batchers: dict[str, QueryBatcher[list[Hit]]] = {}

    @property
    def calls(self) -> int:
        """Number of ``search_many()`` calls made so far by live batchers."""
        return sum(batcher.calls for batcher in self._batchers.values())

    async def search(self, query: str, options: dict[str, Any]) -> list[Hit]:
        """Return the hits for ``query``, searched together with its peers."""
        key = json.dumps(options, sort_keys=True, default=str)
        batcher = self._batchers.get(key)
        if batcher is None:
            self._drop_idle()
            batcher = QueryBatcher(
                functools.partial(self.engine.search_many, **options)
            )
            self._batchers[key] = batcher
        return await batcher.submit(query)

    def _drop_idle(self) -> None:
        if len(self._batchers) < self.max_idle_batchers:
            return
        for key in [key for key, b in self._batchers.items() if b.idle]:
            del self._batchers[key]


# -- the app -------------------------------------------------------------------


def create_app(
    engine: SemanticSearch,
    *,
    api_key: str | None = None,
    micro_batching: bool = True,
) -> FastAPI:
    """Build the HTTP API over ``engine``; the caller keeps ownership of it.

    With ``api_key`` set, every endpoint except ``/healthz`` and the schema
    needs the header ``Authorization: Bearer <api_key>``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the model before the first request. The chunker is created now
        # because it copies the tokenizer, which must not happen while a search
        # thread is using it.
        await run_in_threadpool(lambda: engine.chunker)
        logger.info(
            "serving collection %s at %s (micro-batching %s)",
            engine.settings.collection,
            redact_uri(engine.settings.uri),
            "on" if micro_batching else "off",
        )
        yield
        logger.info("server stopped")

    app = FastAPI(
        title="semsearch",
        summary="Semantic search over a Milvus collection",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            409: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            502: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    app.state.engine = engine
    app.state.batcher = SearchBatcher(engine) if micro_batching else None
    _add_error_handlers(app)
    # The request log is added last, so it wraps the key check and logs 401s.
    _add_key_check(app, api_key)
    _add_request_log(app)
    _add_routes(app, engine)
    return app


def _add_routes(app: FastAPI, engine: SemanticSearch) -> None:
    @app.post("/search", response_model=SearchResponse)
    async def search(request: SearchRequest) -> dict[str, Any]:
        """Return the ``k`` chunks most similar to the query, best first."""
        options = _search_options(request)
        batcher: SearchBatcher | None = app.state.batcher
        if batcher is None:
            hits = await engine.asearch(request.query, **options)
        else:
            hits = await batcher.search(request.query, options)
        return {"hits": [hit.to_dict() for hit in hits]}

    @app.post("/search/batch", response_model=BatchSearchResponse)
    async def search_batch(request: BatchSearchRequest) -> dict[str, Any]:
        """Search several queries at once; returns one hit list per query."""
        results = await engine.asearch_many(request.queries, **_search_options(request))
        return {"results": [[hit.to_dict() for hit in hits] for hits in results]}

    @app.post("/documents", response_model=IngestResponse)
    async def ingest(request: IngestRequest) -> dict[str, Any]:
        """Chunk, embed and store records; unchanged records are skipped."""
        records = [document.model_dump() for document in request.documents]
        report = await run_in_threadpool(engine.ingest_records, records)
        return report.to_dict()

    @app.delete("/documents", response_model=DeleteResponse)
    async def delete(request: DeleteRequest) -> dict[str, int]:
        """Delete chunks by document ids, source or filter; returns the row count."""
        deleted = await run_in_threadpool(
            lambda: engine.delete(
                request.ids, source=request.source, filter=request.filter
            )
        )
        return {"deleted": deleted}

    @app.get("/stats", response_model=StatsResponse)
    async def stats() -> dict[str, Any]:
        """Return the collection's row and document counts and its model."""
        return await run_in_threadpool(engine.stats)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict[str, str]:
        """Return 200 while the Milvus backend responds, 503 when it does not."""
        await run_in_threadpool(engine.store.exists)
        return {"status": "ok"}


def _search_options(request: SearchOptionsModel) -> dict[str, Any]:
    return {
        "k": request.k,
        "filter": request.filter,
        "where": request.where,
        "mode": request.mode,
        "min_score": request.min_score,
    }


# -- authentication, errors and logging ---------------------------------------


def _add_key_check(app: FastAPI, api_key: str | None) -> None:
    """Reject requests without ``Authorization: Bearer <api_key>`` before parsing."""
    if api_key is None:
        return
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def check_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in PUBLIC_PATHS:
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {
                    "error": "missing or invalid API key: send 'Authorization: Bearer KEY'"
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(
        request: Request, exc: RequestValidationError
    ) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return _error(400, "invalid JSON in the request body; send a JSON object")
        return _error(422, "invalid request: " + describe_validation_errors(errors))

    @app.exception_handler(SemsearchError)
    async def semsearch_error(request: Request, exc: SemsearchError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.warning("%s %s failed: %s", request.method, request.url.path, exc)
        return _error(status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal server error: {type(exc).__name__}")


def status_for(exc: SemsearchError) -> int:
    """Return the HTTP status for an engine error."""
    if isinstance(exc, FilterError):
        return 400
    if isinstance(exc, ConfigError):
        return 422
    if isinstance(exc, CollectionNotFoundError):
        return 404
    if isinstance(exc, ModelMismatchError):
        return 409
    if isinstance(exc, StoreError) and (
        exc.retryable or isinstance(exc, LiteFileInUseError)
    ):
        return 503
    if isinstance(exc, StoreError):
        return 502
    return 500


def describe_validation_errors(errors: Any) -> str:
    """Join pydantic errors into one line: ``k: Input should be ...; ...``."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(location) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid value')}")
    return "; ".join(parts)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _add_request_log(app: FastAPI) -> None:
    @app.middleware("http")
    async def log_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            # NOTE: only the method and path are logged, never headers, so the
            # API key does not reach the log.
            logger.info(
                "%s %s %d %.1f ms",
                request.method,
                request.url.path,
                status,
                (time.perf_counter() - started) * 1000,
            )


def serve(
    engine: SemanticSearch,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    micro_batching: bool = True,
) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    # Open the store now: on Milvus Lite this takes the file's lock, so another
    # process cannot write the file while the server runs, and a file already
    # open elsewhere stops the server at once with LiteFileInUseError.
    _ = engine.store.client
    app = create_app(engine, api_key=api_key, micro_batching=micro_batching)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
