"""Load BEIR-format test collections and score retrieval runs against their qrels.

nDCG@k, recall@k and MAP@k reproduce trec_eval's ``ndcg_cut``, ``recall`` and
``map_cut``, which BEIR computes through pytrec_eval. MRR@k is trec_eval's
``recip_rank`` with a first relevant rank beyond k scoring 0. BEIR computes its
MRR in Python with a stable sort, so it can differ from ours when scores tie. The
tests compare every metric with pytrec_eval on random runs when it is installed.

Ranking rule, from ``comp_sim_docno`` in trec_eval's ``form_res_rels.c``:
documents are sorted by score descending, and equal scores are ordered by doc id
descending in byte order (``strcmp``). The order of the run's mapping does not
matter. Doc ids compare as strings, so "9" ranks before "10" when their scores
are equal.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LoadError

logger = logging.getLogger(__name__)

METRIC_NAMES = ("ndcg", "recall", "mrr", "map")


@dataclass(frozen=True)
class BeirDataset:
    """A test collection in BEIR layout, restricted to one qrels split.

    ``corpus`` maps doc id to ``(title, text)`` in file order. ``queries`` contains
    only the queries judged in the split, and ``qrels`` maps query id to
    ``{doc id: relevance}``.
    """

    name: str
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(directory: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Raises ConfigError when the directory, a file or the split is missing, and
    LoadError when a line cannot be parsed or the qrels name a query id that
    ``queries.jsonl`` lacks.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(
            f"BEIR directory {str(root)!r} not found; pass a folder that contains "
            "corpus.jsonl, queries.jsonl and qrels/"
        )
    qrels_path = _split_path(root, split)
    corpus_path = _require_file(root / "corpus.jsonl")
    queries_path = _require_file(root / "queries.jsonl")

    qrels = _read_qrels(qrels_path)
    corpus = {
        doc_id: (str(row.get("title") or ""), str(row.get("text") or ""))
        for doc_id, row in _read_jsonl(corpus_path)
    }
    all_queries = {
        qid: str(row.get("text") or "") for qid, row in _read_jsonl(queries_path)
    }
    queries = _judged_queries(all_queries, qrels, queries_path)

    _warn_unknown_docs(qrels, corpus, qrels_path)
    logger.info(
        "Loaded %s: %d docs, %d queries, %d judgements (split %s)",
        root.name,
        len(corpus),
        len(queries),
        sum(len(judged) for judged in qrels.values()),
        split,
    )
    return BeirDataset(name=root.name, corpus=corpus, queries=queries, qrels=qrels)


def load_qrels(
    directory: str | os.PathLike[str], split: str = "test"
) -> dict[str, dict[str, int]]:
    """Read only ``qrels/<split>.tsv`` of a BEIR folder, as ``load_beir`` does."""
    path = _split_path(Path(directory), split)
    qrels = _read_qrels(path)
    if not qrels:
        raise LoadError(str(path), "qrels file has no judgements")
    return qrels


def _split_path(root: Path, split: str) -> Path:
    path = root / "qrels" / f"{split}.tsv"
    if path.is_file():
        return path
    available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
    raise ConfigError(
        f"qrels split {split!r} not found: {str(path)!r} is missing; "
        f"available splits in {str(root)!r}: {available!r}"
    )


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"BEIR file {str(path)!r} not found; a BEIR folder must contain "
            "corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
        )
    return path


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of a UTF-8 file, without a leading BOM.

    Each line is decoded on its own, so invalid UTF-8 raises a LoadError that
    names the line.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LoadError(str(path), f"cannot read file: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise LoadError(
                    str(path),
                    f"invalid UTF-8 at byte {exc.start} of the line; save the file "
                    "as UTF-8",
                    number,
                ) from exc
            yield number, line


def _read_jsonl(path: Path) -> Iterable[tuple[str, dict[str, object]]]:
    """Yield ``(_id, record)`` for each non-empty line of a JSON Lines file."""
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(str(path), f"invalid JSON: {exc.msg}", number) from exc
        if not isinstance(record, dict) or "_id" not in record:
            raise LoadError(str(path), "record has no '_id' field", number)
        yield str(record["_id"]), record


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Parse a ``query-id<TAB>corpus-id<TAB>score`` file. A later duplicate row wins."""
    qrels: dict[str, dict[str, int]] = {}
    numbered = list(_decoded_lines(path))
    # Without quoting every line is exactly one row, so line numbers stay right.
    rows = csv.reader(
        (line for _, line in numbered), delimiter="\t", quoting=csv.QUOTE_NONE
    )
    for (number, _), row in zip(numbered, rows, strict=True):
        if not row or (number == 1 and row[0] == "query-id"):
            continue
        if len(row) < 3:
            raise LoadError(
                str(path), f"expected 3 tab-separated fields, got {row!r}", number
            )
        try:
            relevance = int(row[2])
        except ValueError as exc:
            raise LoadError(
                str(path), f"relevance {row[2]!r} is not an integer", number
            ) from exc
        qrels.setdefault(row[0], {})[row[1]] = relevance
    return qrels


def _judged_queries(
    all_queries: Mapping[str, str], qrels: Mapping[str, object], path: Path
) -> dict[str, str]:
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise LoadError(
            str(path),
            f"{len(missing)} judged query ids are missing, first {missing[0]!r}; "
            "check that the qrels split belongs to this queries file",
        )
    return {qid: all_queries[qid] for qid in qrels}


def _warn_unknown_docs(
    qrels: Mapping[str, Mapping[str, int]], corpus: Mapping[str, object], path: Path
) -> None:
    unknown = {doc for judged in qrels.values() for doc in judged if doc not in corpus}
    if unknown:
        logger.warning(
            "%s judges %d doc ids that corpus.jsonl lacks, e.g. %r",
            path,
            len(unknown),
            min(unknown),
        )


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    k_values: Sequence[int] = (10, 100),
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """Average nDCG@k, recall@k, MRR@k and MAP@k over the queries in ``qrels``.

    Returns keys ``ndcg@k``, ``recall@k``, ``mrr@k`` and ``map@k`` for each k. A
    query in ``qrels`` that is absent from ``run`` scores 0 on every metric, as with
    ``trec_eval -c``. Queries in ``run`` but not in ``qrels`` are ignored. BEIR
    averages only over queries present in both, which gives the same numbers when
    the run has an entry for every judged query.

    ``ignore_identical_ids`` drops a document from a query's ranking when its id
    equals the query id, as BEIR does by default, so that a corpus that also
    contains the queries cannot score a self-match. See ``per_query_metrics`` for
    the exact definitions.
    """
    per_query = per_query_metrics(
        qrels, run, k_values=k_values, ignore_identical_ids=ignore_identical_ids
    )
    names = _metric_keys(k_values)
    count = len(per_query)
    return {name: sum(q[name] for q in per_query.values()) / count for name in names}


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    k_values: Sequence[int] = (10, 100),
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """Compute every metric of ``evaluate_run`` for each query in ``qrels``.

    Definitions, with ranks counted from 1 after the trec_eval ordering above:

    - relevant: a judged document with relevance > 0. Relevance 0, negative
      relevance and unjudged documents are non-relevant and have gain 0.
    - nDCG@k = DCG@k / IDCG@k with DCG@k = sum over ranks r <= k of
      rel(r) / log2(r + 1), so the gain is the relevance grade itself (not
      2^rel - 1). IDCG@k is the DCG@k of the judged relevances sorted
      descending, and nDCG is 0 when the query has no relevant document.
    - recall@k = relevant documents in the top k / all relevant documents.
    - MAP@k = (sum of precision@r over the relevant ranks r <= k) / all relevant
      documents, which is trec_eval's ``map_cut``.
    - MRR@k = 1 / rank of the first relevant document if that rank is <= k,
      else 0.
    """
    cutoffs = _check_k_values(k_values)
    if not qrels:
        raise ConfigError("qrels is empty; pass at least one judged query")

    results: dict[str, dict[str, float]] = {}
    for query_id, judged in qrels.items():
        scores = dict(run.get(query_id, {}))
        if ignore_identical_ids:
            scores.pop(query_id, None)
        ranked = _rank(query_id, scores)[: max(cutoffs)]
        gains = [judged.get(doc_id, 0) for doc_id in ranked]
        results[query_id] = _query_metrics(gains, judged, cutoffs)
    return results


def _check_k_values(k_values: Sequence[int]) -> list[int]:
    cutoffs = list(k_values)
    if not cutoffs:
        raise ConfigError("k_values is empty; pass cut-offs such as (10, 100)")
    for k in cutoffs:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(
                f"invalid cut-off {k!r} in k_values; use positive integers"
            )
    return cutoffs


def _metric_keys(k_values: Sequence[int]) -> list[str]:
    return [f"{metric}@{k}" for metric in METRIC_NAMES for k in k_values]


def _rank(query_id: str, scores: Mapping[str, float]) -> list[str]:
    """Order doc ids by score descending, then doc id descending (trec_eval)."""
    for doc_id, score in scores.items():
        if math.isnan(score):
            raise ConfigError(
                f"score of doc {doc_id!r} for query {query_id!r} is NaN; "
                "drop the document or give it a finite score"
            )
    ordered = sorted(
        scores.items(), key=lambda item: (float(item[1]), item[0]), reverse=True
    )
    return [doc_id for doc_id, _ in ordered]


def _query_metrics(
    gains: Sequence[int], judged: Mapping[str, int], cutoffs: Sequence[int]
) -> dict[str, float]:
    """Compute the metrics of one query from the relevance of its ranked docs."""
    ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)
    num_relevant = len(ideal)
    first_relevant = next((r for r, g in enumerate(gains, start=1) if g > 0), None)

    metrics: dict[str, float] = {}
    for k in cutoffs:
        top = gains[:k]
        hits = sum(1 for g in top if g > 0)
        ideal_dcg = _dcg(ideal[:k])
        metrics[f"ndcg@{k}"] = _dcg(top) / ideal_dcg if ideal_dcg > 0 else 0.0
        metrics[f"recall@{k}"] = hits / num_relevant if num_relevant else 0.0
        reached = first_relevant is not None and first_relevant <= k
        metrics[f"mrr@{k}"] = 1.0 / first_relevant if reached else 0.0
        metrics[f"map@{k}"] = _average_precision(top, num_relevant)
    return metrics


def _dcg(gains: Sequence[int]) -> float:
    return sum(
        g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1) if g > 0
    )


def _average_precision(gains: Sequence[int], num_relevant: int) -> float:
    if num_relevant == 0:
        return 0.0
    total = 0.0
    hits = 0
    for rank, gain in enumerate(gains, start=1):
        if gain > 0:
            hits += 1
            total += hits / rank
    return total / num_relevant


def write_trec_run(
    run: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str],
    *,
    tag: str = "semsearch",
) -> None:
    """Write ``run`` as a TREC run file: ``qid Q0 docid rank score tag`` per line.

    Each query's documents are ranked as the metrics rank them (score
    descending, then doc id descending), so trec_eval reads the same order. The
    lines go to a hidden ``.NAME.partial`` file beside ``path``, which is then
    renamed over it, so ``path`` never contains a partial run. A process killed
    mid-write can leave the hidden file behind.
    """
    if not tag or any(ch.isspace() for ch in tag):
        raise ConfigError(f"invalid run tag {tag!r}; use one word without spaces")
    check_trec_ids(run, {doc_id for scores in run.values() for doc_id in scores})
    lines = []
    for query_id in sorted(run):
        for rank, doc_id in enumerate(_rank(query_id, run[query_id]), start=1):
            score = float(run[query_id][doc_id])
            lines.append(f"{query_id} Q0 {doc_id} {rank} {score!r} {tag}\n")

    target = check_run_path(path)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        with temporary.open("w", encoding="utf-8") as out:
            out.writelines(lines)
        os.replace(temporary, target)
    except OSError as exc:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove the partial run file %s", temporary)
        raise ConfigError(
            f"cannot write run file {str(target)!r}: {exc.strerror or exc}; "
            "pass a path in a folder that exists and is writable"
        ) from exc


def check_run_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if a run file can be created there, else raise.

    Checks the name and the parent folder only, so callers can fail before a
    long evaluation rather than after it.
    """
    target = Path(path)
    if not str(path) or not target.name or target.is_dir():
        raise ConfigError(
            f"invalid run file path {str(path)!r}; pass a file name such as run.trec"
        )
    folder = target.parent
    if not folder.is_dir():
        raise ConfigError(
            f"cannot write run file {str(target)!r}: folder {str(folder)!r} does not "
            "exist; create it or pass another path"
        )
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            f"cannot write run file {str(target)!r}: folder {str(folder)!r} is not "
            "writable; pass another path"
        )
    return target


def check_trec_ids(query_ids: Iterable[str], doc_ids: Iterable[str]) -> None:
    """Raise ConfigError for a query or doc id that a TREC run file cannot store."""
    for query_id in query_ids:
        _check_trec_id(query_id, "query")
    for doc_id in doc_ids:
        _check_trec_id(doc_id, "doc")


def read_trec_run(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Read a TREC run file into ``{query id: {doc id: score}}``.

    Lines have six whitespace-separated fields: query id, the ignored ``Q0``
    column, doc id, rank, score and run tag. The rank column is ignored, as
    trec_eval ignores it, because the score orders the documents. A document
    listed twice for one query is an error. An empty file is an empty run, as
    ``eval --save-run`` writes when no query finds anything.
    """
    source = str(path)
    run: dict[str, dict[str, float]] = {}
    for number, line in _decoded_lines(Path(path)):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise LoadError(
                source,
                f"expected 6 fields (qid Q0 docid rank score tag), "
                f"got {len(fields)}",
                number,
            )
        query_id, _, doc_id, _, score_text, _ = fields
        try:
            score = float(score_text)
        except ValueError as exc:
            raise LoadError(
                source, f"score {score_text!r} is not a number", number
            ) from exc
        if math.isnan(score):
            raise LoadError(source, "score is NaN", number)
        scores = run.setdefault(query_id, {})
        if doc_id in scores:
            raise LoadError(
                source,
                f"doc {doc_id!r} is listed twice for query {query_id!r}",
                number,
            )
        scores[doc_id] = score
    if not run:
        logger.warning("run file %s has no results; every query scores 0", source)
    return run


def _check_trec_id(value: str, kind: str) -> None:
    if not value or any(ch.isspace() for ch in value):
        raise ConfigError(
            f"{kind} id {value!r} is empty or contains whitespace, which a TREC "
            "run file cannot store; drop --save-run or rename the id"
        )
