"""The ``semsearch`` command line. The only module that prints."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import FilterError, SemsearchError
from .settings import DEFAULT_CHUNK_OVERLAP, Settings

if TYPE_CHECKING:
    from rich.console import Console

    from .api import SemanticSearch
    from .benchmark import EvalResult
    from .ingest import IngestReport
    from .types import Hit

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _handle_errors(func: F) -> F:
    """Print expected failures as one line on stderr and exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SemsearchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_FAILURE)

    return wrapper  # type: ignore[return-value]


def _configure_logging(verbosity: int) -> None:
    from rich.logging import RichHandler

    # transformers draws a progress bar on stderr while loading weights.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = RichHandler(console=_stderr(), show_path=False, show_time=verbosity > 1)
    package = logging.getLogger("semsearch")
    package.setLevel(level)
    package.addHandler(handler)
    # pymilvus logs every failed call with a traceback at ERROR; semsearch reports
    # those failures itself, so its records are shown only with -vv.
    # Milvus Lite's in-process gRPC server logs calls it does not implement,
    # which pymilvus then works around.
    logging.getLogger("grpc").setLevel(
        logging.DEBUG if verbosity > 1 else logging.CRITICAL
    )
    logging.getLogger("pymilvus").setLevel(
        logging.DEBUG if verbosity > 1 else logging.CRITICAL
    )
    if verbosity > 1:
        logging.getLogger().setLevel(logging.DEBUG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--uri",
    envvar="SEMSEARCH_URI",
    help="Milvus URI: a Milvus Lite file path, or http://host:19530 for a server.  "
    "[env: SEMSEARCH_URI; default: ./semsearch.db]",
)
@click.option(
    "--token",
    envvar="SEMSEARCH_TOKEN",
    help="Milvus token or 'user:password'; never printed.  [env: SEMSEARCH_TOKEN]",
)
@click.option(
    "--collection",
    "-c",
    envvar="SEMSEARCH_COLLECTION",
    help="Collection name.  [env: SEMSEARCH_COLLECTION; default: semsearch]",
)
@click.option(
    "--model",
    "-m",
    envvar="SEMSEARCH_MODEL",
    help="Embedding model: a hub id or a local directory.  [env: SEMSEARCH_MODEL; "
    "default: sentence-transformers/all-MiniLM-L6-v2, bundled]",
)
@click.option(
    "--device",
    envvar="SEMSEARCH_DEVICE",
    help="Device for the encoder: auto, cpu, cuda, cuda:N or mps.  [default: auto]",
)
@click.option(
    "-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug."
)
@click.version_option(package_name="semsearch")
@click.pass_context
def main(
    ctx: click.Context,
    uri: str | None,
    token: str | None,
    collection: str | None,
    model: str | None,
    device: str | None,
    verbose: int,
) -> None:
    """Semantic search over a Milvus collection with a local sentence encoder."""
    _configure_logging(verbose)
    ctx.obj = Settings.resolve(
        environ={},
        uri=uri,
        token=token,
        collection=collection,
        model=model,
        device=device,
    )


def _engine(ctx: click.Context, **overrides: Any) -> SemanticSearch:
    from .api import SemanticSearch

    settings: Settings = ctx.obj
    engine = SemanticSearch(settings=settings.with_overrides(**overrides))
    ctx.call_on_close(engine.close)
    return engine


# -- ingest ------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--include",
    multiple=True,
    help="Glob of files to take, relative to each folder (repeatable).",
)
@click.option(
    "--exclude", multiple=True, help="Glob of files to leave out (repeatable)."
)
@click.option(
    "--text-field",
    default="text",
    show_default=True,
    help="JSONL/CSV/Parquet column holding the text.",
)
@click.option(
    "--id-field",
    help="Record column holding a stable id.  [default: id or _id, else the line number]",
)
@click.option(
    "--meta",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata added to every document (repeatable).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=8),
    help="Tokens per chunk, special tokens included.  [default: the model's max sequence length]",
)
@click.option(
    "--chunk-overlap",
    type=click.IntRange(min=0),
    default=DEFAULT_CHUNK_OVERLAP,
    show_default=True,
    help="Tokens shared by consecutive chunks.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
@_handle_errors
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    text_field: str,
    id_field: str | None,
    meta: tuple[str, ...],
    chunk_size: int | None,
    chunk_overlap: int,
    as_json: bool,
) -> None:
    """Load, chunk, embed and store documents from files and folders.

    Formats: .txt, .md, .html, .jsonl, .csv, .parquet (and .pdf with pypdf).
    Unchanged documents are skipped; changed ones are replaced. Exits 1 when any
    file or record was skipped.
    """
    from .loaders import parse_meta_pairs

    metadata = parse_meta_pairs(meta)
    engine = _engine(ctx, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    console = _stderr()
    with _IngestProgress(console) as progress:
        report = engine.ingest(
            paths,
            include=include,
            exclude=exclude,
            text_field=text_field,
            id_field=id_field,
            metadata=metadata,
            on_progress=progress.update,
        )
    for skipped in report.skipped:
        where = f"{skipped.source}:{skipped.line}" if skipped.line else skipped.source
        console.print(
            f"[yellow]skipped[/] {where}: {skipped.reason}",
            markup=True,
            highlight=False,
        )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        console.print(_summary(report), highlight=False)
    if report.skipped:
        sys.exit(EXIT_FAILURE)


def _summary(report: IngestReport) -> str:
    rate = report.chunks / report.seconds if report.seconds else 0.0
    return (
        f"{report.documents} documents ({report.new} new, {report.changed} changed, "
        f"{report.unchanged} unchanged), {report.chunks} chunks written, "
        f"{len(report.skipped)} skipped, {report.seconds:.1f} s ({rate:.0f} chunks/s)"
    )


class _IngestProgress:
    """Live counters on stderr; silent when stderr is not a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _IngestProgress:
        if not self.console.is_terminal:
            return self
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[line]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task("ingest", line="loading model")
        self._progress.start()
        return self

    def update(self, snapshot: Any) -> None:
        if self._progress is None:
            return
        elapsed = max(snapshot.elapsed, 1e-9)
        line = (
            f"{snapshot.documents} documents, {snapshot.chunks} chunks, "
            f"{snapshot.chunks / elapsed:.0f} chunks/s, {snapshot.tokens / elapsed:.0f} tokens/s"
        )
        self._progress.update(self._task, line=line)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- search ------------------------------------------------------------------


@main.command()
@click.argument("query")
@click.option(
    "-k",
    "--limit",
    "k",
    type=click.IntRange(1, 16384),
    default=10,
    show_default=True,
    help="Number of hits.",
)
@click.option(
    "--filter",
    "expression",
    help="Milvus boolean expression, e.g. 'metadata[\"year\"] > 1990'.",
)
@click.option(
    "--where",
    multiple=True,
    metavar="KEY=VALUE",
    help="Equality condition on a field or metadata key (repeatable, values quoted safely).",
)
@click.option(
    "--min-score", type=float, help="Drop hits scoring below this (cosine similarity)."
)
@click.option(
    "--mode",
    type=click.Choice(["dense", "bm25", "hybrid"]),
    default="dense",
    show_default=True,
    help="dense: embeddings; bm25: full-text; hybrid: both, fused.",
)
@click.option(
    "--fusion",
    type=click.Choice(["normalized", "rrf"]),
    default="normalized",
    show_default=True,
    help="Hybrid fusion: scores in [0, 1] (normalized) or reciprocal rank fusion.",
)
@click.option(
    "--group-by-doc", is_flag=True, help="Keep only the best chunk of each document."
)
@click.option(
    "--mmr",
    "mmr_lambda",
    type=click.FloatRange(0, 1),
    help="Diversify with MMR: 1 is pure relevance, 0 pure diversity.",
)
@click.option(
    "--rerank",
    "rerank_model",
    metavar="MODEL",
    help="Rescore candidates with a cross-encoder (hub id or local directory).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per hit per line."
)
@click.pass_context
@_handle_errors
def search(
    ctx: click.Context,
    query: str,
    k: int,
    expression: str | None,
    where: tuple[str, ...],
    min_score: float | None,
    mode: str,
    fusion: str,
    group_by_doc: bool,
    mmr_lambda: float | None,
    rerank_model: str | None,
    as_json: bool,
) -> None:
    """Find the chunks most similar in meaning to QUERY."""
    from .filters import parse_where

    conditions = parse_where(where)
    engine = _engine(ctx)
    hits = engine.search(
        query,
        k,
        expression,
        where=conditions,
        min_score=min_score,
        mode=mode,  # type: ignore[arg-type]
        fusion=fusion,  # type: ignore[arg-type]
        group_by_doc=group_by_doc,
        mmr=mmr_lambda,
        rerank=rerank_model,
    )
    if as_json:
        for hit in hits:
            click.echo(json.dumps(hit.to_dict(), ensure_ascii=False))
        return
    _print_hits(hits)


def _print_hits(hits: Sequence[Hit]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not hits:
        _stderr().print("no hits")
        return
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source")
    table.add_column("title")
    table.add_column("snippet", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())
        if len(snippet) > 160:
            snippet = snippet[:157] + "..."
        table.add_row(str(rank), f"{hit.score:.3f}", hit.source, hit.title, snippet)
    console.print(table)


@main.command()
@click.argument("first")
@click.argument("second")
@click.pass_context
@_handle_errors
def similarity(ctx: click.Context, first: str, second: str) -> None:
    """Print the cosine similarity of two texts."""
    engine = _engine(ctx)
    click.echo(f"{engine.similarity(first, second):.4f}")


# -- inspection --------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_handle_errors
def stats(ctx: click.Context, as_json: bool) -> None:
    """Show the collection's row and document counts and its model fingerprint."""

    engine: SemanticSearch = _engine(ctx)
    info = engine.stats()
    if as_json:
        click.echo(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key in ("collection", "uri", "rows", "documents"):
        table.add_row(key, str(info[key]))
    for key, value in (info.get("model") or {}).items():
        table.add_row(f"model.{key}", str(value))
    Console().print(table)


@main.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per document."
)
@click.pass_context
@_handle_errors
def sources(ctx: click.Context, as_json: bool) -> None:
    """List stored documents with their chunk counts."""
    engine = _engine(ctx)
    documents = engine.sources()
    if as_json:
        for doc in documents:
            click.echo(
                json.dumps(
                    {
                        "doc_id": doc.doc_id,
                        "source": doc.source,
                        "title": doc.title,
                        "chunks": doc.stored_chunks,
                    },
                    ensure_ascii=False,
                )
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("source")
    table.add_column("title")
    table.add_column("chunks", justify="right")
    for doc in documents:
        table.add_row(
            doc.source if doc.source == doc.doc_id else doc.doc_id,
            doc.title,
            str(doc.stored_chunks),
        )
    Console().print(table)


@main.command()
@click.option(
    "--source",
    "source_paths",
    multiple=True,
    required=True,
    help="Source path as listed by 'semsearch sources' (repeatable).",
)
@click.pass_context
@_handle_errors
def delete(ctx: click.Context, source_paths: tuple[str, ...]) -> None:
    """Delete every chunk of the documents from the given sources."""
    engine = _engine(ctx)
    missing = []
    for source in source_paths:
        count = engine.delete_source(source)
        if count == 0:
            missing.append(source)
        else:
            _stderr().print(f"deleted {count} chunks from {source}", highlight=False)
    if missing:
        raise FilterError(
            f"no stored chunks with source {missing[0]!r}; "
            "'semsearch sources' lists the stored sources"
        )


# -- evaluation --------------------------------------------------------------


@main.command(name="eval")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--split", default="test", show_default=True, help="qrels split: qrels/<split>.tsv."
)
@click.option(
    "--mode",
    type=click.Choice(["dense", "bm25", "hybrid"]),
    default="dense",
    show_default=True,
    help="Retrieval mode to score.",
)
@click.option(
    "--fusion",
    type=click.Choice(["normalized", "rrf"]),
    default="normalized",
    show_default=True,
    help="Fusion for hybrid mode.",
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, 100),
    default=10,
    show_default=True,
    help="Cut-off for nDCG and MRR, next to the fixed @10 and @100.",
)
@click.option(
    "--ann-recall",
    is_flag=True,
    help="Also measure the index's recall@10 against exact search.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handle_errors
def evaluate(
    ctx: click.Context,
    dataset_dir: str,
    split: str,
    mode: str,
    fusion: str,
    k: int,
    ann_recall: bool,
    as_json: bool,
) -> None:
    """Score retrieval on a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/).

    The corpus is ingested into its own collection (eval_<folder name> unless
    --collection is given), then every judged query runs through the normal
    search path. Re-runs reuse the stored embeddings.
    """
    from .benchmark import run_benchmark
    from .evaluate import load_beir

    dataset = load_beir(dataset_dir, split=split)
    collection = None
    if ctx.parent is None or ctx.parent.params.get("collection") is None:
        name = Path(dataset_dir).resolve().name
        collection = "eval_" + "".join(ch if ch.isalnum() else "_" for ch in name)
    engine = _engine(ctx, collection=collection)
    result = run_benchmark(
        engine,
        dataset,
        split=split,
        mode=mode,  # type: ignore[arg-type]
        fusion=fusion,  # type: ignore[arg-type]
        k=k,
        measure_ann_recall=ann_recall,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    _print_eval(result)


def _print_eval(result: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{result.dataset} ({result.split}, {result.queries} queries, {result.mode})"
    )
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    if result.ann_recall_at_10 is not None:
        table.add_row("ANN recall@10", f"{result.ann_recall_at_10:.4f}")
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
