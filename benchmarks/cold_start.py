"""Cold `semsearch search` wall time, torch against ONNX Runtime, in new processes.

Each round ingests nothing: it runs `semsearch search` as a new process (model
load, store open, one query) once with --backend torch and once with --backend
onnx, alternating, after one warm-up run of each. The collection is built once
with a few SciFact passages.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, parser, print_table, read_passages, write_json


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    options = arguments.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from semsearch import Document, SemanticSearch

    folder = Path(tempfile.mkdtemp(prefix="semsearch-cold-"))
    uri = str(folder / "cold.db")
    passages = read_passages(options.scifact, 50)
    documents = [
        Document(
            id=str(i),
            source=f"scifact/{i}",
            title="",
            text=text,
            content_hash=hashlib.sha256(text.encode()).hexdigest(),
        )
        for i, text in enumerate(passages)
    ]
    with SemanticSearch(uri=uri, device="cpu", backend="onnx") as engine:
        engine.ingest_documents(documents)

    executable = str(Path(sys.executable).with_name("semsearch"))
    commands = {
        backend: [
            executable,
            "--uri",
            uri,
            "--device",
            "cpu",
            "--backend",
            backend,
            "search",
            "What causes insulin resistance?",
            "-k",
            "3",
            "--json",
        ]
        for backend in ("torch", "onnx")
    }
    timings: dict[str, list[float]] = {backend: [] for backend in commands}
    for round_index in range(options.repeats + 1):
        for backend, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            if round_index > 0:  # the first round warms the page cache
                timings[backend].append(time.perf_counter() - start)

    ratio = median([t / o for t, o in zip(timings["torch"], timings["onnx"])])
    print_table(
        ["backend", "median s", "min s", "max s"],
        [
            [name, f"{median(t):.2f}", f"{min(t):.2f}", f"{max(t):.2f}"]
            for name, t in timings.items()
        ],
    )
    print(f"torch / onnx wall time, median of pairs: {ratio:.2f}")
    write_json(
        options.json,
        "cold_start.json",
        {"machine": machine(), "seconds": timings, "torch_over_onnx": ratio},
    )


if __name__ == "__main__":
    main()
