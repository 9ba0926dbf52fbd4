"""Tests for the encoder, run against the real bundled model on CPU."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from semsearch.encoder import Encoder, l2_normalize, plan_batches, pool
from semsearch.errors import ConfigError
from semsearch.models import fingerprint

DIM = 384
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
SHORT_TEXTS = [
    "The cat sat on the mat",
    "A feline rested on the rug",
    "Quarterly tax filings are due in April",
    "gene expression",
    "How does insulin resistance develop?",
    "x",
    "",
    "   ",
    "Vitamin D deficiency and bone density",
    "CRISPR off-target effects in human cells",
]


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Make sure no test reaches for the Hugging Face hub."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(device="cpu")


@pytest.fixture(scope="module")
def abstracts() -> list[str]:
    corpus = SCIFACT / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"SciFact corpus not found at {corpus}")
    texts = []
    with corpus.open(encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            texts.append(f"{record['title']}. {record['text']}")
            if len(texts) == 200:
                break
    return texts


@pytest.fixture(scope="module")
def mixed_texts(abstracts: list[str]) -> list[str]:
    """200 texts: short phrases, abstracts and texts far over 256 tokens.

    The kinds are interleaved so that length sorting reorders them heavily.
    """
    short = [f"{SHORT_TEXTS[i % 10]} {i}" for i in range(60)]
    single = abstracts[:100]
    long = [" ".join(abstracts[100 + i : 103 + i]) for i in range(40)]
    pools = [short, single, long]
    mixed = []
    for i in range(200):
        source = pools[i % 3] or pools[(i + 1) % 3] or pools[(i + 2) % 3]
        mixed.append(source.pop(0))
    return mixed


@pytest.fixture(scope="module")
def reference(mixed_texts: list[str], encoder: Encoder) -> np.ndarray:
    """Embeddings of the mixed texts from sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(encoder.spec.path), device="cpu")
    return model.encode(mixed_texts, normalize_embeddings=True, batch_size=32)


@pytest.fixture(scope="module")
def small_batch_encoder(encoder: Encoder) -> Encoder:
    """A second encoder with tiny batches and a query prefix."""
    return Encoder(
        encoder.spec,
        device="cpu",
        batch_tokens=512,
        max_batch_size=3,
        query_prefix="query: ",
    )


@pytest.mark.slow
def test_encoder_matches_sentence_transformers(
    encoder: Encoder, mixed_texts: list[str], reference: np.ndarray
) -> None:
    embeddings = encoder.encode_passages(mixed_texts)
    cosines = np.sum(embeddings * reference, axis=1)

    assert len(mixed_texts) == 200
    assert embeddings.shape == reference.shape
    assert cosines.min() >= 0.9999, f"worst row {int(cosines.argmin())}"


def test_encoder_mixed_texts_need_truncation(
    encoder: Encoder, mixed_texts: list[str]
) -> None:
    """Guard the comparison above: it must include texts that both sides cut."""
    over_limit = [t for t in mixed_texts if encoder.count_tokens(t) > 256]

    assert len(over_limit) >= 40


def test_encode_preserves_order(encoder: Encoder, mixed_texts: list[str]) -> None:
    texts = mixed_texts[:30]
    forward = encoder.encode(texts)
    backward = encoder.encode(texts[::-1])

    np.testing.assert_allclose(backward[::-1], forward, atol=1e-5)


def test_encode_single_matches_batch(encoder: Encoder, mixed_texts: list[str]) -> None:
    batch = encoder.encode(mixed_texts[:6])

    for i, text in enumerate(mixed_texts[:6]):
        single = encoder.encode([text])[0]
        np.testing.assert_allclose(single, batch[i], atol=1e-5)


def test_encode_shape_dtype_norm(encoder: Encoder) -> None:
    embeddings = encoder.encode(SHORT_TEXTS)

    assert encoder.dim == DIM
    assert embeddings.shape == (len(SHORT_TEXTS), DIM)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_encode_empty_list(encoder: Encoder) -> None:
    embeddings = encoder.encode([])

    assert embeddings.shape == (0, DIM)
    assert embeddings.dtype == np.float32


def test_encode_rejects_single_string(encoder: Encoder) -> None:
    with pytest.raises(TypeError, match="Wrap it in a list"):
        encoder.encode("a single string")  # type: ignore[arg-type]


def test_encode_invalid_kind(encoder: Encoder) -> None:
    with pytest.raises(ConfigError, match="'document'"):
        encoder.encode(["text"], kind="document")  # type: ignore[arg-type]


def test_encode_similar_sentences_rank_higher(encoder: Encoder) -> None:
    cat, feline, tax = encoder.encode_queries(
        [
            "The cat sat on the mat",
            "A feline rested on the rug",
            "Quarterly tax filings are due in April",
        ]
    )
    similar = float(cat @ feline)

    assert similar > float(cat @ tax) + 0.3
    assert similar > float(feline @ tax) + 0.3


def test_encode_small_batches_match_large(
    encoder: Encoder, small_batch_encoder: Encoder, mixed_texts: list[str]
) -> None:
    texts = mixed_texts[:24]
    large = encoder.encode_passages(texts)
    small = small_batch_encoder.encode_passages(texts)

    np.testing.assert_allclose(small, large, atol=1e-5)


def test_encode_queries_prepends_prefix(
    encoder: Encoder, small_batch_encoder: Encoder
) -> None:
    prefixed = small_batch_encoder.encode_queries(["insulin resistance"])
    manual = encoder.encode_passages(["query: insulin resistance"])

    np.testing.assert_allclose(prefixed, manual, atol=1e-5)


def test_encoder_prefix_in_fingerprint(small_batch_encoder: Encoder) -> None:
    assert small_batch_encoder.fingerprint["query_prefix"] == "query: "
    assert small_batch_encoder.fingerprint["passage_prefix"] == ""


def test_encoder_fingerprint(encoder: Encoder) -> None:
    assert encoder.fingerprint == fingerprint(encoder.spec, DIM)
    assert encoder.fingerprint["dim"] == DIM


def test_encode_truncation_warning(
    encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="semsearch.encoder")

    encoder.encode(["word " * 400, "short text", "token " * 300])

    warnings = [r for r in caplog.records if r.name == "semsearch.encoder"]
    assert len(warnings) == 1
    assert "Truncated 2 of 3 inputs to 256 tokens" in warnings[0].getMessage()


def test_encode_no_warning_within_limit(
    encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="semsearch.encoder")
    fits = "word " * encoder.max_passage_tokens

    encoder.encode([fits, "short text"])

    assert [r for r in caplog.records if r.name == "semsearch.encoder"] == []


def test_encode_counted_counts_model_inputs(
    encoder: Encoder, small_batch_encoder: Encoder
) -> None:
    """The count is the tokens the model read: special tokens, prefix, truncation."""
    texts = ["hello world", "word " * 400, "a b c"]

    vectors, tokens = encoder.encode_counted(texts)
    _, single = encoder.encode_counted(["hello world"])
    _, prefixed = small_batch_encoder.encode_counted(texts, kind="query")

    np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-6)
    assert single == 2 + 2
    assert tokens == (2 + 2) + 256 + (3 + 2)
    # "query: " adds two tokens ("query", ":") to each input but the truncated one.
    assert prefixed == tokens + 2 + 2
    assert encoder.encode_counted([])[1] == 0


def test_count_tokens_content_only(encoder: Encoder) -> None:
    assert encoder.count_tokens("hello world") == 2
    assert encoder.count_tokens("") == 0
    assert encoder.count_tokens("word " * 600) == 600


def test_encoder_max_passage_tokens(encoder: Encoder) -> None:
    """256 tokens minus [CLS] and [SEP], with no passage prefix."""
    assert encoder.max_passage_tokens == 254


def test_encode_warns_one_token_over(
    encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="semsearch.encoder")

    encoder.encode(["word " * (encoder.max_passage_tokens + 1)])

    warnings = [r for r in caplog.records if r.name == "semsearch.encoder"]
    assert len(warnings) == 1


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cuda:", "tpu:0", ""])
def test_encoder_invalid_device(device: str) -> None:
    with pytest.raises(ConfigError, match="Invalid device") as caught:
        Encoder(device=device)

    assert "cuda:N" in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_encoder_cuda_unavailable() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Encoder(device="cuda")


def test_encoder_fp16_on_cpu() -> None:
    with pytest.raises(ConfigError, match="'fp16' is not supported on CPU"):
        Encoder(device="cpu", precision="fp16")


def test_encoder_invalid_precision() -> None:
    with pytest.raises(ConfigError, match="Invalid precision 'fp8'"):
        Encoder(device="cpu", precision="fp8")  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["batch_tokens", "max_batch_size"])
def test_encoder_invalid_batch_option(option: str) -> None:
    with pytest.raises(ConfigError, match=f"Invalid {option} 0"):
        Encoder(device="cpu", **{option: 0})  # type: ignore[arg-type]


def test_encoder_bf16_on_cpu(encoder: Encoder) -> None:
    bf16 = Encoder(encoder.spec, device="cpu", precision="bf16")
    texts = SHORT_TEXTS[:5]

    cosines = np.sum(bf16.encode(texts) * encoder.encode(texts), axis=1)

    assert bf16.precision == "bf16"
    assert cosines.min() > 0.99


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=60),
    batch_tokens=st.integers(min_value=1, max_value=4096),
    max_batch_size=st.integers(min_value=1, max_value=16),
)
def test_plan_batches_limits(
    lengths: list[int], batch_tokens: int, max_batch_size: int
) -> None:
    batches = plan_batches(lengths, batch_tokens, max_batch_size)

    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert len(batch) <= max_batch_size
        assert len(batch) == 1 or padded <= batch_tokens


def test_plan_batches_longest_first() -> None:
    batches = plan_batches([3, 10, 1, 7], batch_tokens=20, max_batch_size=8)

    assert batches == [[1, 3], [0, 2]]


def test_pool_mean_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])

    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]


def test_pool_mean_all_masked_is_finite() -> None:
    hidden = torch.ones(1, 2, 3)
    mask = torch.zeros(1, 2, dtype=torch.long)

    assert torch.isfinite(pool(hidden, mask, "mean")).all()


def test_pool_max_ignores_padding() -> None:
    hidden = torch.tensor([[[-5.0, 1.0], [-3.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])

    assert pool(hidden, mask, "max").tolist() == [[-3.0, 1.0]]


def test_pool_cls_first_attended() -> None:
    hidden = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])

    assert pool(hidden, mask, "cls").tolist() == [[1.0], [5.0]]


def test_pool_lasttoken_either_padding_side() -> None:
    hidden = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])

    assert pool(hidden, mask, "lasttoken").tolist() == [[2.0], [6.0]]


def test_l2_normalize_zero_row() -> None:
    vectors = torch.tensor([[3.0, 4.0], [0.0, 0.0]])

    result = l2_normalize(vectors)

    assert torch.allclose(result[0], torch.tensor([0.6, 0.8]))
    assert result[1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("device", "backend", "expected"),
    [("cpu", "onnx", 512), ("cpu", "torch", 2048), ("cuda", "torch", 16384),
     ("cuda:1", "torch", 16384), ("mps", "torch", 16384)],
)  # fmt: skip
def test_default_batch_tokens(device: str, backend: str, expected: int) -> None:
    from semsearch.encoder import default_batch_tokens

    assert default_batch_tokens(device, backend) == expected


def test_encoder_batch_tokens_default_and_override(encoder: Encoder) -> None:
    explicit = Encoder(encoder.spec, device="cpu", backend="torch", batch_tokens=300)

    assert encoder.batch_tokens == (512 if encoder.backend == "onnx" else 2048)
    assert explicit.batch_tokens == 300
