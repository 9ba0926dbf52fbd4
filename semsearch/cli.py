"""The ``semsearch`` command line. The only module that prints."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
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
    from .migrate import MigrationReport
    from .types import Hit

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1
# compare-runs: a million trials over 1,000 queries take seconds, not hours.
MAX_TRIALS = 1_000_000


def _stderr() -> Console:
    from rich.console import Console

    console = Console(stderr=True)
    # Rich wraps at 80 columns when stderr is a file or pipe. Soft wrapping keeps
    # each message on one line there, so grep finds it whole.
    console.soft_wrap = not console.is_terminal
    return console


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
    # gRPC's C core prints keepalive notices on stderr from long-lived channels.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if verbosity > 1 else "NONE")
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
    _configure_pymilvus_logging(verbosity)
    # Milvus Lite logs a traceback when its file is locked by another process;
    # the store turns that failure into one error line.
    logging.getLogger("milvus_lite").setLevel(
        logging.DEBUG if verbosity > 1 else logging.CRITICAL
    )
    if verbosity > 1:
        logging.getLogger().setLevel(logging.DEBUG)


def _configure_pymilvus_logging(verbosity: int) -> None:
    """Show pymilvus' own log records only with -vv, in this process.

    Importing pymilvus runs its settings.init_log (pymilvus 3.0), which gives
    the "pymilvus", "pymilvus.milvus_client" and "pymilvus.bulk_writer" loggers
    their own stderr handlers and levels, so it is imported first and those
    loggers are set afterwards.
    """
    import pymilvus  # noqa: F401

    names = [
        name
        for name in logging.root.manager.loggerDict
        if name == "pymilvus" or name.startswith("pymilvus.")
    ]
    for name in names:
        pymilvus_logger = logging.getLogger(name)
        if verbosity > 1:
            pymilvus_logger.setLevel(logging.DEBUG)
            continue
        pymilvus_logger.setLevel(logging.CRITICAL + 1)
        for handler in list(pymilvus_logger.handlers):
            pymilvus_logger.removeHandler(handler)


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
    "--backend",
    envvar="SEMSEARCH_BACKEND",
    type=click.Choice(["auto", "torch", "onnx"]),
    help="Encoder runtime: torch, or ONNX Runtime (CPU only, pip install "
    "'semsearch[onnx]'). auto: torch on a GPU, ONNX Runtime on CPU when installed.  "
    "[env: SEMSEARCH_BACKEND; default: auto]",
)
@click.option(
    "--precision",
    envvar="SEMSEARCH_PRECISION",
    type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]),
    help="Encoder precision. auto: fp16 on CUDA, else fp32. int8 needs the ONNX "
    "backend and a collection written at int8.  [env: SEMSEARCH_PRECISION; "
    "default: auto]",
)
@click.option(
    "--index-type",
    envvar="SEMSEARCH_INDEX_TYPE",
    help="Vector index of new collections, e.g. HNSW, FLAT, IVF_FLAT.  "
    "[env: SEMSEARCH_INDEX_TYPE; default: FLAT on Milvus Lite, HNSW on a server]",
)
@click.option(
    "--index-params",
    envvar="SEMSEARCH_INDEX_PARAMS",
    metavar="JSON",
    callback=lambda ctx, param, value: _parse_index_params(value),
    help='Index build parameters as a JSON object, e.g. \'{"M": 32}\'.  '
    "[env: SEMSEARCH_INDEX_PARAMS]",
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
    backend: str | None,
    precision: str | None,
    index_type: str | None,
    index_params: dict[str, Any] | None,
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
        backend=backend,
        precision=precision,
        index_type=index_type,
        index_params=index_params,
    )


def _parse_index_params(value: str | None) -> dict[str, Any] | None:
    from .settings import parse_index_params

    if value is None:
        return None
    try:
        return parse_index_params(value)
    except SemsearchError as exc:
        raise click.BadParameter(str(exc), param_hint="'--index-params'") from exc


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
@click.option(
    "--prune",
    is_flag=True,
    help="Delete stored documents from these paths whose files or records are gone.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print how many documents are new, changed, unchanged and to delete; "
    "write nothing.",
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
    prune: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Load, chunk, embed and store documents from files and folders.

    Formats: .txt, .md, .html, .jsonl, .csv, .parquet (and .pdf with pypdf).
    Unchanged documents are skipped; changed ones are replaced, and only their
    chunks whose text changed are embedded again. Exits 1 when any file or
    record was skipped.
    """
    from .loaders import count_documents, parse_meta_pairs

    metadata = parse_meta_pairs(meta)
    engine = _engine(ctx, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    console = _stderr()
    total = None
    if console.is_terminal:
        total = count_documents(paths, include=include, exclude=exclude)
    with _IngestProgress(console, total) as progress:
        report = engine.ingest(
            paths,
            include=include,
            exclude=exclude,
            text_field=text_field,
            id_field=id_field,
            metadata=metadata,
            on_progress=progress.update,
            prune=prune,
            dry_run=dry_run,
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
    if report.dry_run:
        return (
            f"dry run, nothing written: {report.new} new, {report.changed} changed, "
            f"{report.unchanged} unchanged, {report.deleted} to delete, "
            f"{len(report.skipped)} skipped"
        )
    rate = report.chunks / report.seconds if report.seconds else 0.0
    return (
        f"{report.documents} documents ({report.new} new, {report.changed} changed, "
        f"{report.unchanged} unchanged, {report.deleted} deleted), "
        f"{report.chunks} chunks written ({report.embedded} embedded, "
        f"{report.reused} reused), {len(report.skipped)} skipped, "
        f"{report.seconds:.1f} s ({rate:.0f} chunks/s)"
    )


class _IngestProgress:
    """Live counters on stderr; silent when stderr is not a terminal.

    With ``total`` (the number of documents, when it is known in advance) it also
    shows a bar and the estimated time remaining.
    """

    def __init__(self, console: Console, total: int | None = None) -> None:
        self.console = console
        self.total = total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _IngestProgress:
        if not self.console.is_terminal:
            return self
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.fields[line]}")]
        if self.total:
            columns += [BarColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        columns.append(TimeElapsedColumn())
        self._progress = Progress(*columns, console=self.console, transient=True)
        self._task = self._progress.add_task(
            "ingest", total=self.total, line="loading model"
        )
        self._progress.start()
        return self

    def update(self, snapshot: Any) -> None:
        if self._progress is None:
            return
        elapsed = max(snapshot.elapsed, 1e-9)
        line = (
            f"{snapshot.documents} documents, {snapshot.chunks} chunks, "
            f"{snapshot.chunks / elapsed:.0f} chunks/s, "
            f"{snapshot.tokens / elapsed:.0f} tokens/s"
        )
        self._progress.update(self._task, line=line, completed=snapshot.documents)

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
    "--min-score",
    type=float,
    help="Drop hits scoring below this: the cosine similarity in dense mode, the "
    "fused score in [0, 1] in hybrid mode, the raw BM25 score in bm25 mode.",
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

    try:
        conditions = parse_where(where)
    except FilterError as exc:
        raise click.BadParameter(str(exc), param_hint="'--where'") from exc
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
@click.option(
    "--filter",
    "expression",
    help="Milvus expression that restricts the searched chunks, e.g. 'ordinal == 0'.",
)
@click.option(
    "--save-run",
    "run_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the ranked documents of every query (top 100) to this TREC "
    "run file, for compare-runs or trec_eval.",
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
    expression: str | None,
    run_path: str | None,
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
    if run_path is not None:
        from .evaluate import check_run_path, check_trec_ids

        # Fail now rather than after the whole ingest and search.
        check_run_path(run_path)
        check_trec_ids(dataset.queries, dataset.corpus)
    collection = None
    if ctx.parent is None or ctx.parent.params.get("collection") is None:
        name = Path(dataset_dir).resolve().name
        collection = "eval_" + "".join(
            ch if ch.isascii() and ch.isalnum() else "_" for ch in name
        )
    engine = _engine(ctx, collection=collection)
    result = run_benchmark(
        engine,
        dataset,
        split=split,
        mode=mode,  # type: ignore[arg-type]
        fusion=fusion,  # type: ignore[arg-type]
        k=k,
        measure_ann_recall=ann_recall,
        expression=expression,
    )
    if run_path is not None:
        from .evaluate import write_trec_run

        write_trec_run(result.run, run_path, tag=f"semsearch-{mode}")
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


@main.command(name="compare-runs")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("run_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("run_b", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--split", default="test", show_default=True, help="qrels split: qrels/<split>.tsv."
)
@click.option(
    "--metric",
    default="ndcg@10",
    show_default=True,
    help="Per-query metric to compare: ndcg, recall, mrr or map, with a cut-off.",
)
@click.option(
    "--trials",
    type=click.IntRange(100, MAX_TRIALS),
    default=10_000,
    show_default=True,
    help="Random sign flips for the p-value, and resamples for the interval.",
)
@click.option(
    "--confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    help="Coverage of the bootstrap interval of the difference.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def compare_runs_command(
    dataset_dir: str,
    run_a: str,
    run_b: str,
    split: str,
    metric: str,
    trials: int,
    confidence: float,
    seed: int,
    as_json: bool,
) -> None:
    """Test whether run B scores differently from run A on the same queries.

    RUN_A and RUN_B are TREC run files, such as two `eval --save-run` outputs.
    Prints both means, B minus A with a bootstrap interval, the p-value of a
    paired randomization test and the per-query wins and losses. Judged queries
    missing from a run score 0.
    """
    from .evaluate import load_qrels, read_trec_run
    from .significance import compare_runs, describe

    if math.isnan(confidence):
        raise click.BadParameter("nan is not a number", param_hint="'--confidence'")
    qrels = load_qrels(dataset_dir, split)
    comparison = compare_runs(
        qrels,
        read_trec_run(run_a),
        read_trec_run(run_b),
        metric=metric,
        trials=trials,
        confidence=confidence,
        seed=seed,
    )
    if as_json:
        click.echo(json.dumps(comparison.to_dict()))
        return
    click.echo(describe(comparison))


# -- server ------------------------------------------------------------------


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 listens on every interface.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="TCP port to listen on.",
)
@click.option(
    "--api-key",
    envvar="SEMSEARCH_API_KEY",
    help="Require 'Authorization: Bearer KEY' on every endpoint except /healthz. "
    "Prefer the environment variable: a value given here shows in the process "
    "list.  [env: SEMSEARCH_API_KEY]",
)
@click.option(
    "--micro-batching/--no-micro-batching",
    default=True,
    show_default=True,
    help="Embed the queries of concurrent /search requests in one encoder call.",
)
@click.pass_context
@_handle_errors
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    api_key: str | None,
    micro_batching: bool,
) -> None:
    """Serve search, ingest and delete as an HTTP JSON API until interrupted.

    Needs the server extra: pip install 'semsearch[server]'. The API schema is at
    /openapi.json and interactive documentation at /docs.
    """
    from .errors import ConfigError

    try:
        from .server import serve as run_server
    except ImportError as exc:
        raise ConfigError(
            f"'semsearch serve' needs FastAPI and uvicorn, but {exc.name!r} is not "
            "installed; run pip install 'semsearch[server]'"
        ) from exc
    # Request lines and uvicorn's start and stop notices go to stderr even
    # without -v; the handler is the one _configure_logging installed.
    package = logging.getLogger("semsearch")
    for name in ("semsearch.server", "uvicorn.error"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        if name.startswith("uvicorn"):
            for handler in package.handlers:
                logger.addHandler(handler)
    engine = _engine(ctx)
    run_server(
        engine,
        host=host,
        port=port,
        api_key=api_key or None,
        micro_batching=micro_batching,
    )


# -- fine-tuning and reindexing ----------------------------------------------


@main.command()
@click.option(
    "--out",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for the fine-tuned model; must be new or empty.",
)
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(exists=True, dir_okay=False),
    help='JSONL of {"anchor", "positive", optional "negative"} objects.',
)
@click.option(
    "--from-collection",
    metavar="NAME",
    help="Mine pairs from this ingested collection: headings, titles, sentences.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Pairs per step; each anchor's negatives are the other pairs' passages.",
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=2e-5, show_default=True
)
@click.option(
    "--loss",
    type=click.Choice(["mnr", "triplet"]),
    default="mnr",
    show_default=True,
    help="mnr: in-batch negatives; triplet: hard negatives mined from the collection.",
)
@click.option(
    "--hard-negatives",
    is_flag=True,
    help="With --from-collection and --loss mnr, also mine one hard negative per "
    "pair by search in the collection (the triplet loss always does).",
)
@click.option(
    "--max-pairs", type=click.IntRange(min=2), help="Train on a random sample of pairs."
)
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=128,
    show_default=True,
    help="Training input length in tokens; the saved model keeps its own limit.",
)
@click.option(
    "--held-out",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of pairs kept out of training to measure recall@1 and MRR.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Epochs without a better held-out MRR before training stops.",
)
@click.option(
    "--accumulation-steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches per optimiser step; negatives stay within each batch.",
)
@click.option(
    "--mini-batch-size",
    type=click.IntRange(min=1),
    help="Embed each batch this many pairs at a time with cached gradients, so a "
    "large --batch-size fits in memory; costs one more forward pass per batch.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handle_errors
def finetune(
    ctx: click.Context,
    output_dir: str,
    pairs_file: str | None,
    from_collection: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    loss: str,
    hard_negatives: bool,
    max_pairs: int | None,
    max_length: int,
    held_out: float,
    patience: int,
    accumulation_steps: int,
    mini_batch_size: int | None,
    seed: int,
    as_json: bool,
) -> None:
    """Fine-tune the model (--model) on pairs from a file or a collection.

    The result is a model directory to pass as --model, then to 'semsearch
    reindex' to re-embed a collection with it.
    """
    from .errors import ConfigError
    from .finetune import FinetuneConfig
    from .finetune import finetune as run_finetune

    if (pairs_file is None) == (from_collection is None):
        raise click.UsageError("pass exactly one of --pairs FILE or --from-collection")
    if hard_negatives and from_collection is None:
        raise click.UsageError(
            "--hard-negatives mines from a collection; pass --from-collection NAME, "
            "or put a 'negative' in each record of the pairs file"
        )
    if mini_batch_size is not None and mini_batch_size >= batch_size:
        raise click.UsageError(
            f"--mini-batch-size {mini_batch_size} is not smaller than --batch-size "
            f"{batch_size}, so it would change nothing; pass a smaller value or "
            "leave it out"
        )
    out = Path(output_dir)
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"output directory {output_dir!r} is not empty; pass a new directory"
        )
    engine = _engine(ctx, collection=from_collection)
    mine_negatives = hard_negatives or loss == "triplet"
    pairs = _training_pairs(engine, pairs_file, loss, mine_negatives, max_pairs, seed)
    config = FinetuneConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        loss=loss,  # type: ignore[arg-type]
        max_length=max_length,
        accumulation_steps=accumulation_steps,
        mini_batch_size=mini_batch_size,
        held_out=held_out,
        patience=patience,
        seed=seed,
        device=engine.settings.device,
    )
    console = _stderr()
    console.print(f"training on {len(pairs)} pairs", highlight=False)
    with _TrainingProgress(console) as progress:
        result = run_finetune(
            pairs,
            out,
            model=engine.settings.model,
            config=config,
            on_event=progress.update,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    console.print(
        f"saved epoch {result.best_epoch} to {result.output_dir} "
        f"(weights {result.weights_sha256[:12]}) in {result.seconds:.0f} s",
        highlight=False,
    )


def _training_pairs(
    engine: SemanticSearch,
    pairs_file: str | None,
    loss: str,
    mine_negatives: bool,
    max_pairs: int | None,
    seed: int,
) -> list[Any]:
    """Read or mine pairs, sample them, and mine hard negatives when asked."""
    from .errors import ConfigError
    from .pairs import (
        mine_collection_pairs,
        mine_hard_negatives,
        read_pairs,
        select_pairs,
    )

    if pairs_file is not None:
        pairs = select_pairs(read_pairs(pairs_file), max_pairs, seed)
        missing = sum(pair.negative is None for pair in pairs)
        if loss == "triplet" and missing:
            raise ConfigError(
                f"{missing} pairs in {pairs_file!r} have no 'negative', which the "
                "triplet loss needs; add negatives or use --loss mnr"
            )
        return pairs

    pairs = select_pairs(mine_collection_pairs(engine.store, seed=seed), max_pairs, seed)
    if mine_negatives:
        engine.store.check_fingerprint(engine.encoder.fingerprint)
        pairs = mine_hard_negatives(pairs, engine.encoder, engine.store)
    return pairs


class _TrainingProgress:
    """A step bar with the running loss, and one line per finished epoch."""

    # Without a terminal (a log file, CI), a plain line at most this often.
    LOG_INTERVAL_SECONDS = 60.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Any = None
        self._task: Any = None
        self._last_line = time.monotonic()

    def __enter__(self) -> _TrainingProgress:
        if not self.console.is_terminal:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task("train", total=None, epoch=1, loss=0.0)
        self._progress.start()
        return self

    def update(self, event: Any) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=event.step,
                total=event.total_steps,
                epoch=event.epoch,
                loss=event.loss,
            )
        elif (
            event.step > 0
            and time.monotonic() - self._last_line >= self.LOG_INTERVAL_SECONDS
        ):
            self._last_line = time.monotonic()
            self.console.print(
                f"epoch {event.epoch}: step {event.step} of {event.total_steps}, "
                f"loss {event.loss:.4f}",
                highlight=False,
            )
        epoch = event.finished_epoch
        if epoch is not None:
            recall = "n/a" if epoch.recall_at_1 is None else f"{epoch.recall_at_1:.4f}"
            mrr = "n/a" if epoch.mrr is None else f"{epoch.mrr:.4f}"
            if epoch.loss is None:
                line = f"before training: held-out recall@1 {recall}, MRR {mrr}"
            else:
                line = (
                    f"epoch {epoch.epoch}: loss {epoch.loss:.4f}, held-out recall@1 "
                    f"{recall}, MRR {mrr}, {epoch.seconds:.0f} s"
                )
            self.console.print(line, highlight=False)
            self._last_line = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


@main.command()
@click.option(
    "--to-collection",
    metavar="NAME",
    help="Name of the new collection.  [default: <collection>_<weights hash>]",
)
@click.option(
    "--drop-old",
    is_flag=True,
    help="Drop the previous collection after the switch instead of keeping it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handle_errors
def reindex(
    ctx: click.Context, to_collection: str | None, drop_old: bool, as_json: bool
) -> None:
    """Re-embed --collection with --model, then point the name at the new copy.

    The collection name becomes an alias; searches use the old vectors until
    every row is copied. The old collection is kept unless --drop-old is given.
    """
    from .reindex import reindex as run_reindex

    engine = _engine(ctx)
    console = _stderr()
    with _RowProgress(console, "re-embedding") as progress:
        result = run_reindex(
            engine.store,
            engine.encoder,
            target=to_collection,
            drop_old=drop_old,
            on_progress=progress.update,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    old_state = "dropped" if result.dropped_old else "kept"
    console.print(
        f"{result.rows} chunks re-embedded into {result.new_collection}; "
        f"{result.alias} now points to it ({result.old_collection} {old_state}), "
        f"{result.seconds:.0f} s",
        highlight=False,
    )


class _RowProgress:
    """A bar of rows copied, on stderr; silent when stderr is not a terminal."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _RowProgress:
        if not self.console.is_terminal:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task(self.label, total=None)
        self._progress.start()
        return self

    def update(self, copied: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=copied, total=total)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- migration ---------------------------------------------------------------


@main.command()
@click.option(
    "--to",
    "target_uri",
    required=True,
    metavar="URI",
    help="Target Milvus URI: a Milvus Lite file path, http://host:19530 or a "
    "Zilliz Cloud endpoint.",
)
@click.option(
    "--to-token",
    envvar="SEMSEARCH_TO_TOKEN",
    help="Token of the target; never printed.  [env: SEMSEARCH_TO_TOKEN]",
)
@click.option(
    "--to-collection",
    help="Target collection name.  [default: the source collection's name]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 16384),
    default=1000,
    show_default=True,
    help="Rows read and upserted per batch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@_handle_errors
def migrate(
    ctx: click.Context,
    target_uri: str,
    to_token: str | None,
    to_collection: str | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Copy the collection to another Milvus backend without embedding again.

    Copies vectors, text, metadata and the model fingerprint from --uri and
    --collection to --to. The target computes its own BM25 fields when it has
    BM25 full-text search. Rows are upserted, so re-running is safe; exits 1
    when the row counts differ afterwards. --index-type and --index-params
    apply to the target collection.
    """
    from .migrate import RowCountMismatchError
    from .store import redact_uri

    engine = _engine(ctx)
    console = _stderr()
    try:
        with _RowProgress(console, "migrating") as progress:
            report = engine.migrate_to(
                target_uri,
                to_collection,
                token=to_token,
                batch_size=batch_size,
                on_progress=progress.update,
            )
    except RowCountMismatchError as exc:
        # The copy finished, so --json callers still get the counts to act on.
        if as_json:
            click.echo(json.dumps(_migration_summary(exc.report, error=str(exc))))
        raise

    if as_json:
        click.echo(json.dumps(_migration_summary(report)))
        return
    source_uri = redact_uri(report.source_uri)
    target_uri = redact_uri(report.target_uri)
    console.print(
        f"copied {report.copied} rows from {report.source_collection} "
        f"({source_uri}) to {report.target_collection} ({target_uri}); "
        f"both have {report.target_rows} rows, BM25 on the target: "
        f"{'yes' if report.bm25 else 'no'}, {report.seconds:.1f} s",
        highlight=False,
    )


def _migration_summary(
    report: MigrationReport, error: str | None = None
) -> dict[str, Any]:
    """Return the report as a JSON-ready dict with tokens removed from the URIs."""
    from .store import redact_uri

    summary = report.to_dict()
    for key in ("source_uri", "target_uri"):
        summary[key] = redact_uri(summary[key])
    if error is not None:
        summary["error"] = error
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
