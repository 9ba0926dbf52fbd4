"""Load-test the HTTP API with micro-batching on and off, side by side.

Starts the server in a child process on a free loopback port for each setting,
sends the same queries from concurrent clients (httpx AsyncClient) and reports
errors, p50 and p99 latency and throughput. Nothing leaves 127.0.0.1.

    python benchmarks/load_test.py --db /tmp/samples.db

The collection is filled from samples/ first when it does not exist, so a
prepared file is reused across runs. Each phase stops after --queries requests
or --time-limit seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EXCLUDES = ("README.md", "LICENSES/*")

# Questions about the sample documents, cycled to make up the query count.
QUESTIONS = [
    "How does SQLite roll back a transaction after a power failure?",
    "How does write-ahead logging work and when does a checkpoint happen?",
    "Declaring a foreign key with ON DELETE CASCADE",
    "full-text search tables and MATCH queries",
    "spatial index of bounding boxes for range queries",
    "SQL functions that extract values from JSON text",
    "What happens to a String when ownership moves to another variable?",
    "rules for mutable references and borrowing",
    "storing keys with associated values in a hash map",
    "sending data between threads through channels",
    "propagating errors with the question mark operator",
    "sharing state between threads with a mutex",
    "ways a database file can get corrupted",
    "the space program and landing on the moon",
    "taxes, the budget and the national debt",
    "civil rights and equal opportunity",
    "how are lifetimes annotated on references",
    "what is a trait object",
    "query planner and index selection",
    "the economy, jobs and unemployment",
]


@dataclass
class PhaseResult:
    """What one phase of the load test measured."""

    micro_batching: bool
    requests: int
    errors: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    batched_calls: int | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("serve-worker", help=argparse.SUPPRESS)
    worker.add_argument("--fd", type=int, required=True)
    worker.add_argument("--micro-batching", choices=["on", "off"], required=True)
    parser.add_argument(
        "--db", required=True, help="Milvus Lite file; filled from samples/ if empty."
    )
    parser.add_argument("--collection", default="semsearch")
    parser.add_argument("--queries", type=int, default=2000, help="Requests per phase.")
    parser.add_argument("--concurrency", type=int, default=32, help="Parallel clients.")
    parser.add_argument("-k", type=int, default=10, help="Hits per query.")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="Seconds after which a phase stops sending requests.",
    )
    parser.add_argument("--json", action="store_true", help="Print results as JSON.")
    args = parser.parse_args(argv)
    if args.command is None:
        if not 1 <= args.queries <= 100_000:
            parser.error(f"invalid --queries {args.queries}: use 1 to 100000")
        if not 1 <= args.concurrency <= 256:
            parser.error(f"invalid --concurrency {args.concurrency}: use 1 to 256")
    return args


# -- the server child process --------------------------------------------------


def serve_worker(args: argparse.Namespace) -> None:
    """Serve the API on an inherited listening socket until SIGTERM.

    Prints how many search_many() calls the micro-batcher made, on exit. uvicorn
    runs in a thread because in the main thread it re-raises SIGTERM after
    shutting down, which would end the process before the print.
    """
    import uvicorn

    from semsearch import SemanticSearch
    from semsearch.server import create_app

    listener = socket.socket(fileno=args.fd)
    # Blocked here, SIGTERM waits for sigwait() below; the thread inherits the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    with SemanticSearch(uri=args.db, collection=args.collection) as engine:
        app = create_app(engine, micro_batching=args.micro_batching == "on")
        config = uvicorn.Config(app, log_config=None, access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
        thread.start()
        signal.sigwait({signal.SIGTERM})
        server.should_exit = True
        thread.join()
        batcher = app.state.batcher
    print(json.dumps({"batched_calls": batcher.calls if batcher else None}))


# -- the load generator --------------------------------------------------------


def ensure_collection(db: str, collection: str) -> None:
    from semsearch import SemanticSearch

    with SemanticSearch(uri=db, collection=collection) as engine:
        if engine.store.exists():
            return
        print(f"ingesting samples/ into {db} ...", file=sys.stderr)
        report = engine.ingest([REPO_ROOT / "samples"], exclude=SAMPLE_EXCLUDES)
        print(f"{report.documents} documents, {report.chunks} chunks", file=sys.stderr)


def start_server(args: argparse.Namespace, micro_batching: bool) -> tuple[Any, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    port = listener.getsockname()[1]
    command = [
        sys.executable,
        __file__,
        "--db",
        args.db,
        "--collection",
        args.collection,
        "serve-worker",
        "--fd",
        str(listener.fileno()),
        "--micro-batching",
        "on" if micro_batching else "off",
    ]
    process = subprocess.Popen(
        command,
        pass_fds=[listener.fileno()],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    listener.close()
    return process, port


async def wait_ready(base: str, process: Any, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with code {process.returncode}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"server at {base} not ready after {timeout_s:.0f} s")


async def run_load(
    base: str, queries: list[str], k: int, concurrency: int, time_limit: float
) -> tuple[list[float], int, float]:
    """Send ``queries`` from ``concurrency`` clients; return latencies, errors, time."""
    import httpx

    latencies: list[float] = []
    errors = 0
    pending = iter(queries)
    limits = httpx.Limits(max_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient, deadline: float) -> None:
        nonlocal errors
        for query in pending:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                response = await client.post("/search", json={"query": query, "k": k})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        deadline = time.monotonic() + time_limit
        await asyncio.gather(
            *(client_loop(client, deadline) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def run_phase(args: argparse.Namespace, micro_batching: bool) -> PhaseResult:
    import numpy as np

    queries = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.queries)]
    process, port = start_server(args, micro_batching)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, process))
        # Warm-up: the first searches load the collection and fill caches.
        asyncio.run(run_load(base, QUESTIONS, args.k, 4, args.time_limit))
        latencies, errors, elapsed = asyncio.run(
            run_load(base, queries, args.k, args.concurrency, args.time_limit)
        )
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    calls = None
    if output.strip():
        calls = json.loads(output.strip().splitlines()[-1])["batched_calls"]
    milliseconds = np.asarray(latencies) * 1000
    return PhaseResult(
        micro_batching=micro_batching,
        requests=len(latencies),
        errors=errors,
        seconds=round(elapsed, 2),
        qps=round(len(latencies) / elapsed, 1),
        p50_ms=round(float(np.percentile(milliseconds, 50)), 1),
        p99_ms=round(float(np.percentile(milliseconds, 99)), 1),
        batched_calls=calls,
    )


def print_table(results: list[PhaseResult]) -> None:
    print(
        "| micro-batching | requests | errors | QPS | p50 ms | p99 ms | batched calls |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        calls = "-" if result.batched_calls is None else str(result.batched_calls)
        print(
            f"| {'on' if result.micro_batching else 'off'} | {result.requests} "
            f"| {result.errors} | {result.qps} | {result.p50_ms} | {result.p99_ms} "
            f"| {calls} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve-worker":
        serve_worker(args)
        return 0
    ensure_collection(args.db, args.collection)
    results = [run_phase(args, micro_batching) for micro_batching in (False, True)]
    if args.json:
        print(json.dumps([asdict(result) for result in results]))
    else:
        print(
            f"{args.queries} queries, {args.concurrency} clients, k={args.k}, "
            f"{os.cpu_count()} CPUs, {platform.python_version()}"
        )
        print_table(results)
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
