"""Ingest throughput against the encoder alone, on the same chunks, with peak memory.

Each repetition runs both sides in fresh child processes, alternating, so that
model load, caches and peak RSS belong to one side only:

- encoder only: chunk the passages, then embed every chunk with `encode_passages`;
- ingest: `SemanticSearch.ingest_documents` into a new Milvus Lite file (load,
  chunk, embed and upsert through the three-stage pipeline).

Both time only the work after the model is loaded.

A second table runs the ingest side alone on two corpus sizes ten times apart
(--memory-passages) and compares their peak RSS: the pipeline's bounded queues
should keep it flat. Milvus Lite runs inside the ingesting process and keeps the
collection's rows in memory, so for Lite the table also shows how much a fresh
process gains by opening and loading the finished file, and the peak without it.

    python benchmarks/ingest_pipeline.py --passages 400 --repeats 3
    python benchmarks/ingest_pipeline.py --memory-passages 300 3000
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    machine,
    median,
    parser,
    print_table,
    read_passages,
    write_json,
)


def _documents(passages: list[str]):
    from semsearch.types import Document

    for number, text in enumerate(passages):
        yield Document(
            id=f"p{number}",
            source=f"p{number}",
            title=f"p{number}",
            text=text,
            content_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )


def run_side(side: str, scifact: Path, count: int, uri: str | None = None) -> dict:
    """Run one side in this process and return its timing and peak RSS.

    With ``uri`` (a Milvus server), the ingest writes a new collection there,
    which is dropped at the end.
    """
    from semsearch import SemanticSearch

    passages = read_passages(scifact, count)
    collection = f"ingest_bench_{count}"
    with tempfile.TemporaryDirectory() as folder:
        target = uri or str(Path(folder) / "bench.db")
        with SemanticSearch(uri=target, collection=collection) as engine:
            chunker = engine.chunker  # loads the model and tokenizer
            engine.encoder.encode_passages(["warm up"])
            if side == "encoder":
                started = time.perf_counter()
                chunks = [c.text for d in _documents(passages) for c in chunker.chunk_document(d)]
                engine.encoder.encode_passages(chunks)
                seconds = time.perf_counter() - started
                count_chunks = len(chunks)
            else:
                started = time.perf_counter()
                report = engine.ingest_documents(_documents(passages))
                seconds = time.perf_counter() - started
                count_chunks = report.chunks
                if uri:
                    engine.store.drop()
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = {"side": side, "seconds": seconds, "chunks": count_chunks,
                  "peak_rss_mib": peak_kib / 1024}  # fmt: skip
        if side == "ingest" and not uri:
            result["lite_resident_mib"] = _lite_resident_mib(target, collection)
    return result


# Run in a fresh process. The imports come before the first reading, so only
# opening the file and loading the collection count.
_RESIDENT = """
import sys
from pymilvus import MilvusClient
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
import milvus_lite.adapter.grpc.server
before = rss()
client = MilvusClient(sys.argv[1])
client.load_collection(sys.argv[2])
client.query(sys.argv[2], filter="", output_fields=["count(*)"])
print(rss() - before)
"""


def _lite_resident_mib(path: str, collection: str) -> float:
    """Return how much RSS a fresh process gains by opening and loading a Lite file.

    This is the memory Milvus Lite needs to serve the collection: its server
    threads and its in-memory copy of the rows. The same memory counts in the
    peak RSS of an ingest into Lite, because Lite runs inside the ingesting
    process.
    """
    output = subprocess.run(
        [sys.executable, "-c", _RESIDENT, path, collection],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(output.strip().splitlines()[-1])


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--passages", type=int, default=400)
    arguments.add_argument("--side", choices=["encoder", "ingest"], help=argparse_hidden())
    arguments.add_argument(
        "--memory-passages", type=int, nargs=2, metavar=("SMALL", "LARGE"),
        help="Also compare the ingest's peak RSS on these two corpus sizes",
    )  # fmt: skip
    arguments.add_argument(
        "--skip-throughput", action="store_true", help="Run the memory table only"
    )
    arguments.add_argument(
        "--memory-server",
        action="store_true",
        help="Ingest the memory table's corpora into a Milvus 2.3.5 server started "
        "for the run, so the rows live outside the measured process",
    )
    arguments.add_argument("--uri", help=argparse_hidden())
    args = arguments.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.scifact, args.passages, args.uri)))
        return

    memory = []
    if args.memory_passages:
        memory = _memory_runs(args)
        anchor = memory[0]["peak_rss_mib"]
        print_table(
            ["passages", "chunks", "seconds", "peak RSS MiB", "x smaller corpus"],
            [
                [r["passages"], r["chunks"], f"{r['seconds']:.1f}",
                 f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / anchor:.2f}"]
                for r in memory
            ],
        )  # fmt: skip
        if "lite_resident_mib" in memory[0]:
            # What the ingest needs besides Lite's own share of the process.
            rest = [r["peak_rss_mib"] - r["lite_resident_mib"] for r in memory]
            print_table(
                ["passages", "Lite resident MiB", "peak minus Lite MiB",
                 "x smaller corpus"],
                [
                    [r["passages"], f"{r['lite_resident_mib']:.0f}", f"{other:.0f}",
                     f"{other / rest[0]:.2f}"]
                    for r, other in zip(memory, rest)
                ],
            )  # fmt: skip
        print()
    if args.skip_throughput:
        write_json(args.json, "ingest_memory.json", {"machine": machine(), "memory": memory})
        return

    results: dict[str, list[dict]] = {"encoder": [], "ingest": []}
    for _ in range(args.repeats):
        for side in ("encoder", "ingest"):
            results[side].append(_child(side, args.scifact, args.passages))

    encoder_rate = median([r["chunks"] / r["seconds"] for r in results["encoder"]])
    ingest_rate = median([r["chunks"] / r["seconds"] for r in results["ingest"]])
    rows = [
        ["encoder only (anchor)", f"{encoder_rate:.1f}", "1.00",
         f"{median([r['peak_rss_mib'] for r in results['encoder']]):.0f}"],
        ["ingest to Milvus Lite", f"{ingest_rate:.1f}", f"{ingest_rate / encoder_rate:.2f}",
         f"{median([r['peak_rss_mib'] for r in results['ingest']]):.0f}"],
    ]
    print_table(["pipeline", "chunks/s", "x anchor", "peak RSS MiB"], rows)
    write_json(args.json, "ingest_pipeline.json",
               {"machine": machine(), "passages": args.passages, "runs": results,
                "memory": memory})


def _memory_runs(args) -> list[dict]:
    if not args.memory_server:
        return [
            _child("ingest", args.scifact, count) | {"passages": count}
            for count in args.memory_passages
        ]
    from tests.milvus_server import start_milvus_server

    with tempfile.TemporaryDirectory(prefix="semsearch-ingest-server-") as folder:
        server = start_milvus_server(Path(folder))
        try:
            return [
                _child("ingest", args.scifact, count, server.uri)
                | {"passages": count, "store": "Milvus 2.3.5 server"}
                for count in args.memory_passages
            ]
        finally:
            server.stop()


def _child(side: str, scifact: Path, passages: int, uri: str | None = None) -> dict:
    command = [
        sys.executable, __file__, "--side", side, "--scifact", str(scifact),
        "--passages", str(passages),
    ]  # fmt: skip
    if uri:
        command += ["--uri", uri]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
