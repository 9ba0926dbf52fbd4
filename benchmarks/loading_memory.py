"""Peak memory of loading and chunking against corpus size.

Two corpus shapes, each at two sizes ten times apart, built from SciFact
passages: one large text file (100 MB and 1 GB by default) and a folder of
small files (10,000 and 100,000). Each case runs in a fresh process that loads
every document with ``iter_documents`` and chunks it with the bundled model's
tokenizer, as ``semsearch ingest`` does before embedding. The figure is the
child's peak resident set size (ru_maxrss); the anchor of each shape is its
smaller size, measured in the same run.

    python benchmarks/loading_memory.py --scifact ../data/scifact
    python benchmarks/loading_memory.py --big-mb 10 100 --files 1000 10000
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, parser, print_table, read_passages, write_json

FILES_PER_FOLDER = 1000


def build_big_file(path: Path, passages: list[str], megabytes: int) -> int:
    """Write numbered passages as paragraphs until the file reaches ``megabytes``."""
    target = megabytes * 1_000_000
    written = 0
    number = 0
    with path.open("w", encoding="utf-8") as stream:
        while written < target:
            paragraph = f"{number}. {passages[number % len(passages)]}\n\n"
            stream.write(paragraph)
            written += len(paragraph.encode("utf-8"))
            number += 1
    return written


def build_folder(root: Path, passages: list[str], count: int) -> int:
    """Write ``count`` one-passage files, a thousand per subfolder."""
    written = 0
    for number in range(count):
        folder = root / f"part-{number // FILES_PER_FOLDER:04d}"
        if number % FILES_PER_FOLDER == 0:
            folder.mkdir(parents=True)
        text = passages[number % len(passages)]
        (folder / f"doc-{number:06d}.txt").write_text(text, encoding="utf-8")
        written += len(text.encode("utf-8"))
    return written


def child(path: str) -> None:
    """Load and chunk everything under ``path``; print counts and peak memory."""
    from transformers import AutoTokenizer

    from semsearch.chunking import Chunker, content_token_budget
    from semsearch.loaders import iter_documents
    from semsearch.models import resolve_model

    spec = resolve_model()
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    chunker = Chunker(tokenizer, content_token_budget(tokenizer, spec.max_seq_length))
    ready_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    documents = chunks = characters = 0
    for document in iter_documents([path]):
        documents += 1
        characters += len(document.text)
        chunks += len(chunker.chunk_document(document))
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "documents": documents,
                "chunks": chunks,
                "characters": characters,
                "seconds": round(seconds, 1),
                "ready_mib": round(ready_kib / 1024, 1),
                "peak_mib": round(peak_kib / 1024, 1),
            }
        )
    )


def measure(path: Path) -> dict:
    command = [sys.executable, __file__, "--child", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"child failed on {path}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--child", help=argparse_hidden())
    arguments.add_argument("--big-mb", type=int, nargs=2, default=[100, 1000])
    arguments.add_argument("--files", type=int, nargs=2, default=[10_000, 100_000])
    arguments.add_argument("--work", type=Path, help="Folder for the corpora")
    options = arguments.parse_args()
    if options.child:
        child(options.child)
        return

    passages = read_passages(options.scifact, limit=10_000)
    work = Path(tempfile.mkdtemp(prefix="semsearch-memory-", dir=options.work))
    cases = []
    try:
        for megabytes in options.big_mb:
            path = work / f"big-{megabytes}mb.txt"
            size = build_big_file(path, passages, megabytes)
            cases.append(("one text file", f"{megabytes} MB", size, measure(path)))
            path.unlink()
        for count in options.files:
            folder = work / f"files-{count}"
            size = build_folder(folder, passages, count)
            cases.append(("folder", f"{count:,} files", size, measure(folder)))
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    results = []
    anchors: dict[str, float] = {}
    for shape, label, size, figures in cases:
        anchor = anchors.setdefault(shape, figures["peak_mib"])
        ratio = figures["peak_mib"] / anchor
        rows.append(
            [
                shape, label, f"{size / 1e6:,.0f}", figures["documents"],
                figures["chunks"], figures["ready_mib"], figures["peak_mib"],
                f"{ratio:.2f}", figures["seconds"],
            ]
        )  # fmt: skip
        results.append(
            {"shape": shape, "size": label, "bytes": size, **figures, "ratio": ratio}
        )
    print_table(
        [
            "corpus", "size", "MB", "documents", "chunks", "ready MiB",
            "peak MiB", "peak vs smaller", "seconds",
        ],
        rows,
    )  # fmt: skip
    write_json(
        options.json, "loading_memory.json", {"machine": machine(), "cases": results}
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
