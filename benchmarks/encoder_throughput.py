"""Encoder throughput and single-query latency against sentence-transformers.

Every figure is a median over --repeats rounds. In each round the anchor
(sentence-transformers encode of the same model) runs next to each variant, so
ratios compare runs made under the same machine load.

FLOPs per token, for the fraction of the fp32 matrix-multiply limit: a BERT
encoder of L layers, width d and feed-forward width f spends 2 * (4 d^2 + 2 d f)
per token per layer on weights (Q, K, V, output and the two feed-forward
matrices), plus 2 * 2 * n * d per layer for attention scores and the weighted
sum over a sequence of n tokens. For all-MiniLM-L6-v2 (L=6, d=384, f=1536) that
is 21.2 MFLOP plus 9.2 kFLOP * n per token. The limit is measured on the spot by
timing a 2048 x 2048 float32 torch.matmul.
"""

from __future__ import annotations

import os
import sys
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
    options = arguments.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sentence_transformers import SentenceTransformer

    from semsearch.encoder import Encoder

    passages = read_passages(options.scifact, options.passages)
    queries = [
        text.split(". ")[0] for text in read_passages(options.scifact, options.queries)
    ]
    variants = [tuple(item.split(":")) for item in options.variants.split(",")]
    encoders = {
        f"{backend} {precision}": Encoder(
            device=options.device,
            backend=backend,
            precision=precision,  # type: ignore[arg-type]
        )
        for backend, precision in variants
    }
    first = next(iter(encoders.values()))
    anchor = SentenceTransformer(str(first.spec.path), device=options.device)
    lengths = [len(row) for row in first._tokenize(passages)]
    tokens = sum(lengths)
    mean_tokens = tokens / len(passages)

    # Tokenisation alone, to show it is not the bottleneck.
    tokenize_seconds = []
    for _ in range(options.repeats):
        start = time.perf_counter()
        first._tokenize(passages)
        tokenize_seconds.append(time.perf_counter() - start)

    reference = anchor.encode(passages, batch_size=32, normalize_embeddings=True)
    throughput: dict[str, dict[str, list[float]]] = {}
    for batch_size in (32, 64):
        for name, encoder in encoders.items():
            encoder.max_batch_size = batch_size
            ratios, rates = [], []
            for _ in range(options.repeats):
                start = time.perf_counter()
                anchor.encode(passages, batch_size=batch_size)
                anchor_seconds = time.perf_counter() - start
                start = time.perf_counter()
                encoder.encode_passages(passages)
                seconds = time.perf_counter() - start
                ratios.append(anchor_seconds / seconds)
                rates.append(tokens / seconds)
            throughput[f"{name} batch {batch_size}"] = {"ratio": ratios, "rate": rates}
        anchor_rates = []
        for _ in range(options.repeats):
            start = time.perf_counter()
            anchor.encode(passages, batch_size=batch_size)
            anchor_rates.append(tokens / (time.perf_counter() - start))
        throughput[f"sentence-transformers batch {batch_size}"] = {
            "ratio": [1.0],
            "rate": anchor_rates,
        }

    gflops = matmul_gflops(options.device)
    limit = gflops * 1e9 / flops_per_token(mean_tokens)
    agreement = {}
    for name, encoder in encoders.items():
        cosines = np.sum(encoder.encode_passages(passages) * reference, axis=1)
        agreement[name] = (float(cosines.min()), float(cosines.mean()))

    latency: dict[str, dict[str, float]] = {}
    anchor_times: list[float] = []
    variant_times: dict[str, list[float]] = {name: [] for name in encoders}
    for query in queries * options.repeats:
        start = time.perf_counter()
        anchor.encode([query])
        anchor_times.append(time.perf_counter() - start)
        for name, encoder in encoders.items():
            start = time.perf_counter()
            encoder.encode_queries([query])
            variant_times[name].append(time.perf_counter() - start)
    latency["sentence-transformers"] = {
        "p50_ms": 1e3 * percentile(anchor_times, 0.5),
        "p99_ms": 1e3 * percentile(anchor_times, 0.99),
    }
    for name, times in variant_times.items():
        latency[name] = {
            "p50_ms": 1e3 * percentile(times, 0.5),
            "p99_ms": 1e3 * percentile(times, 0.99),
            "p50_ratio": percentile(anchor_times, 0.5) / percentile(times, 0.5),
        }

    print(
        f"{len(passages)} SciFact passages, {tokens} tokens (mean {mean_tokens:.0f}); "
        f"matmul {gflops:.0f} GFLOP/s, so at most {limit:.0f} tokens/s; "
        f"tokenisation {tokens / median(tokenize_seconds):.0f} tokens/s"
    )
    rows = []
    for name, figures in throughput.items():
        rate = median(figures["rate"])
        key = name.rsplit(" batch", 1)[0]
        low, mean = agreement.get(key, (1.0, 1.0))
        rows.append(
            [
                name,
                f"{rate:.0f}",
                f"{median(figures['ratio']):.2f}",
                f"{rate / limit:.2f}",
                f"{low:.5f}",
                f"{mean:.5f}",
            ]
        )
    print_table(
        ["encoder", "tokens/s", "x anchor", "of limit", "min cos", "mean cos"], rows
    )
    print()
    print_table(
        ["single query", "p50 ms", "p99 ms", "p50 x anchor"],
        [
            [
                name,
                f"{figures['p50_ms']:.1f}",
                f"{figures['p99_ms']:.1f}",
                f"{figures.get('p50_ratio', 1.0):.2f}",
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
            "tokenize_tokens_per_s": tokens / median(tokenize_seconds),
            "throughput": {
                name: {
                    "tokens_per_s": median(f["rate"]),
                    "ratio": median(f["ratio"]),
                }
                for name, f in throughput.items()
            },
            "agreement": agreement,
            "latency": latency,
        },
    )


if __name__ == "__main__":
    main()
