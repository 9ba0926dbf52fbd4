"""Paired significance tests for two retrieval runs scored on the same queries.

A gain of a few thousandths of nDCG@10 on 300 queries can be noise. Two
statistics over the per-query differences (run B minus run A) measure how much:

- the two-sided paired randomization test (Fisher's sign-flip permutation test),
  which Smucker, Allan and Carterette (CIKM 2007, "A comparison of statistical
  significance tests for information retrieval evaluation") recommend for IR.
  Each trial flips the sign of every difference with probability 1/2, and the
  p-value is the share of trials whose mean difference is at least as far from 0
  as the observed one, counting the observed assignment as one trial.
- a percentile bootstrap confidence interval of the mean difference, resampling
  queries with replacement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import ConfigError
from .evaluate import METRIC_NAMES, per_query_metrics

logger = logging.getLogger(__name__)

DEFAULT_TRIALS = 10_000
# Trials are drawn in blocks so that memory stays at BLOCK x queries booleans.
_BLOCK = 1_000


@dataclass(frozen=True)
class Comparison:
    """Per-query comparison of run B against run A on one metric."""

    metric: str
    queries: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    wins: int
    losses: int
    ties: int
    trials: int
    seed: int
    # Judged queries that a run has no results for; each scores 0 there.
    missing_a: int = 0
    missing_b: int = 0

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def compare_scores(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    *,
    metric: str = "score",
    trials: int = DEFAULT_TRIALS,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare two lists of per-query scores, paired by position.

    ``wins`` counts queries where B scores higher than A, ``losses`` where it
    scores lower. ``difference`` and the interval are B minus A.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"invalid trials {trials!r}; pass a positive integer")
    if not 0 < confidence < 1:
        raise ConfigError(
            f"invalid confidence {confidence!r}; pass a value between 0 and 1, "
            "such as 0.95"
        )
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(
            f"the runs have {a.size} and {b.size} scores; pass one score per query "
            "for the same queries in the same order"
        )
    if a.size == 0:
        raise ConfigError("no scores to compare; pass at least one query")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("a score is NaN or infinite; pass finite scores")

    differences = b - a
    rng = np.random.default_rng(seed)
    p_value = _randomization_p_value(differences, trials, rng)
    low, high = _bootstrap_interval(differences, trials, confidence, rng)
    return Comparison(
        metric=metric,
        queries=int(a.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        difference=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=p_value,
        wins=int((differences > 0).sum()),
        losses=int((differences < 0).sum()),
        ties=int((differences == 0).sum()),
        trials=trials,
        seed=seed,
    )


def compare_runs(
    qrels: Mapping[str, Mapping[str, int]],
    run_a: Mapping[str, Mapping[str, float]],
    run_b: Mapping[str, Mapping[str, float]],
    *,
    metric: str = "ndcg@10",
    trials: int = DEFAULT_TRIALS,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Score both runs per query against ``qrels`` and compare them.

    Every query in ``qrels`` counts, and a query missing from a run scores 0
    on it, as in ``evaluate_run``.
    """
    name, cutoff = parse_metric(metric)
    key = f"{name}@{cutoff}"
    missing = {
        label: _missing_queries(qrels, run, label)
        for label, run in (("A", run_a), ("B", run_b))
    }
    per_query_a = per_query_metrics(qrels, run_a, k_values=[cutoff])
    per_query_b = per_query_metrics(qrels, run_b, k_values=[cutoff])
    query_ids = sorted(qrels)
    comparison = compare_scores(
        [per_query_a[q][key] for q in query_ids],
        [per_query_b[q][key] for q in query_ids],
        metric=key,
        trials=trials,
        confidence=confidence,
        seed=seed,
    )
    return replace(comparison, missing_a=missing["A"], missing_b=missing["B"])


def _missing_queries(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    label: str,
) -> int:
    """Count judged queries without results, and reject a run for other queries."""
    missing = sum(1 for query_id in qrels if not run.get(query_id))
    if run and missing == len(qrels):
        raise ConfigError(
            f"run {label} has results for none of the {len(qrels)} judged queries, "
            f"for example not for {min(qrels)!r}; pass a run of this dataset and split"
        )
    if missing:
        logger.warning(
            "run %s has no results for %d of %d judged queries; they score 0",
            label,
            missing,
            len(qrels),
        )
    return missing


def parse_metric(metric: str) -> tuple[str, int]:
    """Split a metric such as ``ndcg@10`` into its name and cut-off."""
    name, _, cutoff = metric.strip().lower().partition("@")
    valid_cutoff = cutoff.isascii() and cutoff.isdigit() and int(cutoff) >= 1
    if name not in METRIC_NAMES or not valid_cutoff:
        choices = ", ".join(f"{known}@10" for known in METRIC_NAMES)
        raise ConfigError(
            f"invalid metric {metric!r}; use a name and a cut-off such as {choices}"
        )
    return name, int(cutoff)


def _randomization_p_value(
    differences: np.ndarray, trials: int, rng: np.random.Generator
) -> float:
    observed = abs(differences.mean())
    # A tolerance keeps sign flips that only reorder the float sum from counting
    # as smaller than the observed mean.
    threshold = observed - 1e-12 * max(1.0, observed)
    at_least_as_extreme = 0
    for start in range(0, trials, _BLOCK):
        count = min(_BLOCK, trials - start)
        flips = rng.random((count, differences.size)) < 0.5
        means = np.where(flips, -differences, differences).mean(axis=1)
        at_least_as_extreme += int((np.abs(means) >= threshold).sum())
    return (at_least_as_extreme + 1) / (trials + 1)


def _bootstrap_interval(
    differences: np.ndarray,
    trials: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    means = np.empty(trials)
    for start in range(0, trials, _BLOCK):
        count = min(_BLOCK, trials - start)
        picks = rng.integers(0, differences.size, size=(count, differences.size))
        means[start : start + count] = differences[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def describe(comparison: Comparison) -> str:
    """Return a one-paragraph plain-text summary of a comparison."""
    level = f"{comparison.confidence * 100:.10g}"
    coverage = ""
    if comparison.missing_a or comparison.missing_b:
        coverage = (
            f" (queries without results, which score 0: A {comparison.missing_a}, "
            f"B {comparison.missing_b})"
        )
    return (
        f"{comparison.metric} over {comparison.queries} queries{coverage}: "
        f"A {comparison.mean_a:.4f}, B {comparison.mean_b:.4f}, "
        f"B - A {comparison.difference:+.4f} "
        f"({level} % interval {comparison.ci_low:+.4f} to {comparison.ci_high:+.4f}), "
        f"randomization p = {comparison.p_value:.4f}; "
        f"B higher on {comparison.wins} queries, lower on {comparison.losses}, "
        f"equal on {comparison.ties}"
    )
