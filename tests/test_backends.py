"""Tests for the encoder backends, ONNX export and its cache, and cold-start imports.

They run the real bundled model with torch and with ONNX Runtime on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from semsearch.encoder import (
    Encoder,
    prefetch,
    resolve_backend,
    resolve_precision,
)
from semsearch.errors import BackendError, ConfigError
from semsearch.pooling import l2_normalize, l2_normalize_array, pool, pool_array

pytest.importorskip("onnxruntime")

REPO_ROOT = Path(__file__).resolve().parents[1]
SCIFACT = REPO_ROOT.parent / "shared" / "data" / "scifact"
HEAVY_MODULES = ("torch", "transformers", "pymilvus", "numpy", "onnxruntime")
SHORT_TEXTS = [
    "The cat sat on the mat",
    "How does insulin resistance develop?",
    "x",
    "",
    "CRISPR off-target effects in human cells",
]


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def torch_encoder() -> Encoder:
    return Encoder(device="cpu", backend="torch")


@pytest.fixture(scope="module")
def onnx_encoder(torch_encoder: Encoder) -> Encoder:
    return Encoder(torch_encoder.spec, device="cpu", backend="onnx")


@pytest.fixture(scope="module")
def int8_encoder(torch_encoder: Encoder) -> Encoder:
    return Encoder(torch_encoder.spec, device="cpu", backend="onnx", precision="int8")


@pytest.fixture(scope="module")
def mixed_texts() -> list[str]:
    """100 texts: short phrases, SciFact abstracts and texts over 256 tokens."""
    corpus = SCIFACT / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"SciFact corpus not found at {corpus}")
    abstracts = []
    with corpus.open(encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            abstracts.append(f"{record['title']}. {record['text']}")
            if len(abstracts) == 80:
                break
    short = [f"{SHORT_TEXTS[i % len(SHORT_TEXTS)]} {i}" for i in range(30)]
    long = [" ".join(abstracts[i : i + 3]) for i in range(10)]
    texts = []
    for i in range(100):
        source = (short, abstracts, long)[i % 3]
        texts.append(source.pop() if source else abstracts.pop())
    return texts


def _cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.sum(first * second, axis=1)


# -- agreement between backends ------------------------------------------------


def test_onnx_fp32_matches_torch(
    torch_encoder: Encoder, onnx_encoder: Encoder, mixed_texts: list[str]
) -> None:
    cosines = _cosines(
        torch_encoder.encode(mixed_texts), onnx_encoder.encode(mixed_texts)
    )

    assert onnx_encoder.backend == "onnx"
    assert cosines.min() >= 0.9999


def test_onnx_fp32_fingerprint_equals_torch(
    torch_encoder: Encoder, onnx_encoder: Encoder
) -> None:
    assert onnx_encoder.fingerprint == torch_encoder.fingerprint


def test_onnx_int8_close_to_fp32(
    onnx_encoder: Encoder, int8_encoder: Encoder, mixed_texts: list[str]
) -> None:
    cosines = _cosines(
        onnx_encoder.encode(mixed_texts), int8_encoder.encode(mixed_texts)
    )

    assert cosines.mean() >= 0.99
    assert cosines.min() >= 0.97


def test_onnx_int8_fingerprint_differs(
    onnx_encoder: Encoder, int8_encoder: Encoder
) -> None:
    assert int8_encoder.fingerprint != onnx_encoder.fingerprint
    assert int8_encoder.fingerprint["precision"] == "int8"


def test_onnx_int8_uses_own_file(onnx_encoder: Encoder, int8_encoder: Encoder) -> None:
    assert int8_encoder.onnx_path != onnx_encoder.onnx_path


def test_onnx_single_query_matches_batch(
    onnx_encoder: Encoder, mixed_texts: list[str]
) -> None:
    batch = onnx_encoder.encode_queries(mixed_texts[:5])

    for index, text in enumerate(mixed_texts[:5]):
        single = onnx_encoder.encode_queries([text])[0]
        assert float(single @ batch[index]) >= 0.9999


def test_encoder_prefetch_matches_sequential(
    onnx_encoder: Encoder, mixed_texts: list[str]
) -> None:
    prefetching = Encoder(
        onnx_encoder.spec, device="cpu", backend="onnx", max_batch_size=8, prefetch=True
    )

    cosines = _cosines(
        prefetching.encode(mixed_texts), onnx_encoder.encode(mixed_texts)
    )

    assert prefetching.prefetch is True
    assert cosines.min() >= 0.9999


def test_fast_tokenizer_matches_transformers(
    onnx_encoder: Encoder, mixed_texts: list[str]
) -> None:
    texts = [text for text in mixed_texts if onnx_encoder.count_tokens(text) < 250]
    expected = onnx_encoder.tokenizer(texts)["input_ids"]

    assert onnx_encoder._tokenize(texts) == expected


# -- the ONNX file cache -------------------------------------------------------


def test_onnx_cache_reused_without_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_encoder: Encoder
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = Encoder(torch_encoder.spec, device="cpu", backend="onnx")

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("export_onnx ran although the file is cached")

    monkeypatch.setattr("semsearch.onnx_export.export_onnx", no_export)
    second = Encoder(torch_encoder.spec, device="cpu", backend="onnx")

    assert first.onnx_path == second.onnx_path
    assert second.onnx_path is not None
    assert second.onnx_path.is_relative_to(tmp_path)


def test_onnx_export_failure_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_encoder: Encoder
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def crash_midway(model: object, args: object, f: str, **kwargs: object) -> None:
        Path(f).write_bytes(b"partial onnx protobuf")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", crash_midway)
    with pytest.raises(BackendError, match="exporter crashed"):
        Encoder(torch_encoder.spec, device="cpu", backend="onnx")

    cache = tmp_path / "semsearch" / "onnx"
    assert list(cache.iterdir()) == []


def _operators(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_onnx_fp32_graph_is_fused(onnx_encoder: Encoder) -> None:
    assert onnx_encoder.onnx_path is not None
    operators = _operators(onnx_encoder.onnx_path)

    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= (
        operators
    )
    assert "Softmax" not in operators


def test_onnx_int8_quantises_fused_attention(int8_encoder: Encoder) -> None:
    assert int8_encoder.onnx_path is not None
    operators = _operators(int8_encoder.onnx_path)

    assert "QAttention" in operators
    assert "Attention" not in operators


def test_fusion_rejected_keeps_plain_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_encoder: Encoder
) -> None:
    from semsearch import onnx_export

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # A negative tolerance rejects every fused graph, as a numeric mismatch would.
    monkeypatch.setattr(onnx_export, "FUSION_TOLERANCE", -1.0)
    encoder = Encoder(torch_encoder.spec, device="cpu", backend="onnx")
    texts = SHORT_TEXTS[:3]

    assert encoder.onnx_path is not None
    assert "Attention" not in _operators(encoder.onnx_path)
    assert "Softmax" in _operators(encoder.onnx_path)
    cosines = _cosines(encoder.encode(texts), torch_encoder.encode(texts))
    assert cosines.min() >= 0.9999


# -- pooling in numpy ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "max", "cls", "lasttoken"])
@pytest.mark.parametrize("left_padding", [False, True])
def test_pool_array_matches_pool(mode: str, left_padding: bool) -> None:
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal((4, 6, 5)).astype(np.float32)
    lengths = [6, 3, 1, 5]
    mask = np.zeros((4, 6), dtype=np.int64)
    for row, length in enumerate(lengths):
        if left_padding:
            mask[row, 6 - length :] = 1
        else:
            mask[row, :length] = 1

    expected = pool(torch.from_numpy(hidden), torch.from_numpy(mask), mode)  # type: ignore[arg-type]
    actual = pool_array(hidden, mask, mode)  # type: ignore[arg-type]

    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_l2_normalize_array_matches_torch() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float32)

    expected = l2_normalize(torch.from_numpy(vectors)).numpy()

    np.testing.assert_allclose(l2_normalize_array(vectors), expected, rtol=1e-6)


def test_pool_array_invalid_mode() -> None:
    with pytest.raises(ConfigError, match="Invalid pooling 'sum'"):
        pool_array(np.zeros((1, 2, 3), np.float32), np.ones((1, 2)), "sum")  # type: ignore[arg-type]


# -- prefetch ------------------------------------------------------------------


def test_prefetch_keeps_order() -> None:
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))


def test_prefetch_raises_producer_error() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetch(failing(), depth=2))


def test_prefetch_early_close_stops_producer() -> None:
    produced: list[int] = []

    def counting() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetch(counting(), depth=2)
    next(stream)
    stream.close()

    assert len(produced) < 10


# -- choosing a backend and a precision ----------------------------------------


def test_resolve_backend_auto_cpu_picks_onnx() -> None:
    assert resolve_backend("auto", "cpu", "auto") == "onnx"


def test_resolve_backend_auto_bf16_picks_torch() -> None:
    assert resolve_backend("auto", "cpu", "bf16") == "torch"


def test_resolve_backend_auto_cuda_picks_torch() -> None:
    assert resolve_backend("auto", "cuda:0", "auto") == "torch"


def test_resolve_backend_onnx_on_cuda() -> None:
    with pytest.raises(ConfigError, match="runs on CPU only, not on 'cuda:0'"):
        resolve_backend("onnx", "cuda:0", "auto")


def test_resolve_backend_invalid() -> None:
    with pytest.raises(ConfigError, match="Invalid backend 'tensorrt'"):
        resolve_backend("tensorrt", "cpu", "auto")  # type: ignore[arg-type]


def test_resolve_precision_int8_needs_onnx() -> None:
    with pytest.raises(ConfigError, match="'int8' needs the ONNX backend"):
        resolve_precision("int8", "cpu", "torch")


def test_resolve_precision_onnx_rejects_bf16() -> None:
    with pytest.raises(ConfigError, match="'bf16' is not supported by the ONNX"):
        resolve_precision("bf16", "cpu", "onnx")


def test_resolve_precision_onnx_auto_is_fp32() -> None:
    assert resolve_precision("auto", "cpu", "onnx") == "fp32"


# -- imports on the cold paths -------------------------------------------------


def _loaded_modules(code: str) -> list[str]:
    """Run ``code`` in a new interpreter and return the heavy modules it loaded."""
    probe = (
        f"{code}\nimport sys, json\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=REPO_ROOT,
        timeout=300,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_help_imports_nothing_heavy() -> None:
    code = (
        "from semsearch.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass"
    )

    assert _loaded_modules(code) == []


def test_cli_search_onnx_skips_torch(tmp_path: Path, onnx_encoder: Encoder) -> None:
    from semsearch import Document, SemanticSearch

    uri = str(tmp_path / "search.db")
    texts = {"cats": "The cat sat on the mat.", "tax": "Tax filings are due in April."}
    documents = [
        Document(
            id=name,
            source=f"{name}.txt",
            title=name,
            text=text,
            content_hash=hashlib.sha256(text.encode()).hexdigest(),
        )
        for name, text in texts.items()
    ]
    with SemanticSearch(uri=uri, encoder=onnx_encoder) as engine:
        engine.ingest_documents(documents)
    code = (
        "from semsearch.cli import main\n"
        f"main(['--uri', {uri!r}, '--backend', 'onnx', '--device', 'cpu', "
        "'search', 'a feline on a rug', '--json', '-k', '1'], standalone_mode=False)"
    )

    loaded = _loaded_modules(code)

    assert "onnxruntime" in loaded
    assert "torch" not in loaded
    assert "transformers" not in loaded
