"""Encoder throughput and single-query latency against sentence-transformers.

Every figure is a median over --repeats rounds. In each round the anchor
(sentence-transformers encode of the same model) and then each variant run one
after another, each in a fresh process. Ratios therefore compare runs made under
the same machine load. The thread pools of torch and ONNX Runtime keep spinning
for a while after each call, and separate processes keep them from competing. Each
process loads its model, warms up, encodes the passages at batch sizes 32 and
64, then embeds each query alone.

FLOPs per token, for the fraction of the fp32 matrix-multiply limit: a BERT
encoder of L layers, width d and feed-forward width f spends 2 * (4 d^2 + 2 d f)
per token per layer on weights (Q, K, V, output and the two feed-forward
matrices), plus 2 * 2 * n * d per layer for attention scores and the weighted
sum over a sequence of n tokens. For all-MiniLM-L6-v2 (L=6, d=384, f=1536) that
is 21.2 MFLOP plus 9.2 kFLOP * n per token. The limit is measured on the spot by
timing a 2048 x 2048 float32 torch.matmul.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    machine,
    median,
    parser,
    percentile,
    print_table,
    read_passages,
    write_json,
)

LAYERS, WIDTH, FEED_FORWARD = 6, 384, 1536


def flops_per_token(mean_tokens: float) -> float:
    weights = 2 * (4 * WIDTH**2 + 2 * WIDTH * FEED_FORWARD)
    attention = 2 * 2 * mean_tokens * WIDTH
    return LAYERS * (weights + attention)


def matmul_gflops(device: str, size: int = 2048, rounds: int = 5) -> float:
    """Measure float32 matrix-multiply GFLOP/s on ``device``."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)
    timings = []
    for _ in range(rounds):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return 2 * size**3 / median(timings) / 1e9


ANCHOR = "sentence-transformers"
BATCH_SIZES = (32, 64)


def run_child(name: str, options, embeddings_path: Path) -> dict:
    """Measure one encoder in this process; save its batch-32 embeddings."""
    passages = read_passages(options.scifact, options.passages)
    queries = [
        text.split(". ")[0] for text in read_passages(options.scifact, options.queries)
    ]
    started = time.perf_counter()
    if name == ANCHOR:
        from sentence_transformers import SentenceTransformer

        from semsearch.models import resolve_model

        model = SentenceTransformer(str(resolve_model().path), device=options.device)

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            return model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    else:
        from semsearch.encoder import Encoder

        backend, precision = name.split(":")
        encoder = Encoder(device=options.device, backend=backend, precision=precision)

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            encoder.max_batch_size = batch_size
            if len(texts) == 1:
                return encoder.encode_queries(texts)
            return encoder.encode_passages(texts)

    load_seconds = time.perf_counter() - started
    encode(passages[:16], 16)
    encode(queries[:1], 1)
    seconds = {}
    for batch_size in BATCH_SIZES:
        started = time.perf_counter()
        embeddings = encode(passages, batch_size)
        seconds[str(batch_size)] = time.perf_counter() - started
        if batch_size == BATCH_SIZES[0]:
            np.save(embeddings_path, np.asarray(embeddings, dtype=np.float32))
    latencies = []
    for query in queries:
        started = time.perf_counter()
        encode([query], 1)
        latencies.append(time.perf_counter() - started)
    return {"load_s": load_seconds, "seconds": seconds, "latencies": latencies}


def count_tokens(passages: list[str]) -> list[int]:
    """Count each passage's model input tokens (special tokens included, 256 at most)."""
    from tokenizers import Tokenizer

    from semsearch.models import resolve_model

    spec = resolve_model()
    tokenizer = Tokenizer.from_file(str(spec.path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(spec.max_seq_length)
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(passages)]


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--passages", type=int, default=256)
    arguments.add_argument("--queries", type=int, default=100)
    arguments.add_argument("--device", default="cpu")
    arguments.add_argument(
        "--variants",
        default="torch:fp32,onnx:fp32,onnx:int8",
        help="backend:precision pairs, comma-separated",
    )
    arguments.add_argument("--child", help=argparse_hidden())
    arguments.add_argument("--embeddings", type=Path, help=argparse_hidden())
    options = arguments.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if options.child:
        result = run_child(options.child, options, options.embeddings)
        print(json.dumps(result))
        return

    passages = read_passages(options.scifact, options.passages)
    lengths = count_tokens(passages)
    tokens = sum(lengths)
    mean_tokens = tokens / len(passages)
    gflops = matmul_gflops(options.device)
    limit = gflops * 1e9 / flops_per_token(mean_tokens)
    names = [ANCHOR, *options.variants.split(",")]

    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="semsearch-encoder-") as folder:
        for _ in range(options.repeats):
            for name in names:
                path = Path(folder) / f"{name.replace(':', '-')}.npy"
                runs[name].append(measure_in_child(name, options, path))
        embeddings = {
            name: np.load(Path(folder) / f"{name.replace(':', '-')}.npy")
            for name in names
        }

    throughput = {}
    for batch_size in map(str, BATCH_SIZES):
        for name in names:
            rates = [tokens / run["seconds"][batch_size] for run in runs[name]]
            ratios = [
                anchor["seconds"][batch_size] / run["seconds"][batch_size]
                for anchor, run in zip(runs[ANCHOR], runs[name])
            ]
            throughput[f"{display(name)} batch {batch_size}"] = {
                "tokens_per_s": median(rates),
                "ratio": median(ratios),
            }
    agreement = {}
    for name in names:
        cosines = np.sum(embeddings[name] * embeddings[ANCHOR], axis=1)
        agreement[display(name)] = (float(cosines.min()), float(cosines.mean()))
    latency = {}
    for name in names:
        p50s = [percentile(run["latencies"], 0.5) for run in runs[name]]
        p99s = [percentile(run["latencies"], 0.99) for run in runs[name]]
        ratios = [
            percentile(anchor["latencies"], 0.5) / percentile(run["latencies"], 0.5)
            for anchor, run in zip(runs[ANCHOR], runs[name])
        ]
        latency[display(name)] = {
            "p50_ms": 1e3 * median(p50s),
            "p99_ms": 1e3 * median(p99s),
            "p50_ratio": median(ratios),
            "load_s": median([run["load_s"] for run in runs[name]]),
        }

    print(
        f"{len(passages)} SciFact passages, {tokens} tokens (mean {mean_tokens:.0f}); "
        f"matmul {gflops:.0f} GFLOP/s, so at most {limit:.0f} tokens/s"
    )
    rows = []
    for name, figures in throughput.items():
        low, mean = agreement[name.rsplit(" batch", 1)[0]]
        rows.append(
            [
                name,
                f"{figures['tokens_per_s']:.0f}",
                f"{figures['ratio']:.2f}",
                f"{figures['tokens_per_s'] / limit:.2f}",
                f"{low:.5f}",
                f"{mean:.5f}",
            ]
        )
    print_table(
        ["encoder", "tokens/s", "x anchor", "of limit", "min cos", "mean cos"], rows
    )
    print()
    print_table(
        ["single query", "p50 ms", "p99 ms", "anchor p50 / p50", "load s"],
        [
            [
                name,
                f"{figures['p50_ms']:.2f}",
                f"{figures['p99_ms']:.2f}",
                f"{figures['p50_ratio']:.2f}",
                f"{figures['load_s']:.2f}",
            ]
            for name, figures in latency.items()
        ],
    )
    write_json(
        options.json,
        "encoder_throughput.json",
        {
            "machine": machine(),
            "device": options.device,
            "passages": len(passages),
            "tokens": tokens,
            "matmul_gflops": gflops,
            "flops_per_token": flops_per_token(mean_tokens),
            "token_limit_per_s": limit,
            "throughput": throughput,
            "agreement": agreement,
            "latency": latency,
            "runs": runs,
        },
    )


def display(name: str) -> str:
    return name if name == ANCHOR else name.replace(":", " ")


def measure_in_child(name: str, options, embeddings: Path) -> dict:
    command = [
        sys.executable, __file__, "--child", name, "--embeddings", str(embeddings),
        "--scifact", str(options.scifact), "--passages", str(options.passages),
        "--queries", str(options.queries), "--device", options.device,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
