"""Helpers shared by the benchmark scripts: SciFact passages, machine facts, output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# The BEIR SciFact folder; SEMSEARCH_SCIFACT overrides the default location.
DEFAULT_SCIFACT = Path(os.environ.get("SEMSEARCH_SCIFACT", "data/scifact"))


def parser(description: str) -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument(
        "--scifact",
        type=Path,
        default=DEFAULT_SCIFACT,
        help="BEIR SciFact folder holding corpus.jsonl",
    )
    arguments.add_argument(
        "--repeats", type=int, default=3, help="Repetitions per figure (median)"
    )
    arguments.add_argument("--json", type=Path, help="Write the results here")
    return arguments


def read_passages(scifact: Path, limit: int) -> list[str]:
    """Return up to ``limit`` SciFact passages as 'title. abstract'."""
    corpus = scifact / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"SciFact corpus not found at {corpus}; pass --scifact DIR")
    passages = []
    with corpus.open(encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            passages.append(f"{record['title']}. {record['text']}")
            if len(passages) == limit:
                break
    return passages


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus_visible": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


def write_json(path: Path | None, default_name: str, results: dict[str, Any]) -> None:
    target = path or REPO_ROOT / "benchmarks" / "results" / default_name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nwrote {target}")


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
