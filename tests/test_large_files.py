"""Large text files are decoded as a stream and split into section documents.

The section size is lowered so that small files made here take the large-file
path; the real threshold is a megabyte.
"""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semsearch import SemanticSearch, formats, loaders
from semsearch.errors import ConfigError, LoadError
from semsearch.loaders import count_documents, iter_documents, split_sections

PARAGRAPH = (
    "The harbour pilot boarded at dawn, read the soundings aloud and steered "
    "the freighter between the breakwaters while the tide was still rising."
)


def _paragraphs(count: int) -> str:
    return "\n\n".join(f"{number}. {PARAGRAPH}" for number in range(count))


def _blocks(text: str, size: int) -> list[str]:
    return [text[offset : offset + size] for offset in range(0, len(text), size)]


# -- splitting -----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(["a", "b", " ", "\n", "é", "日"]), max_size=400
    ),
    block=st.integers(min_value=1, max_value=50),
    size=st.integers(min_value=1, max_value=60),
)
def test_split_sections_rejoins_and_respects_size(text, block, size):
    sections = list(split_sections(_blocks(text, block), size))

    assert "".join(sections) == text
    assert all(0 < len(section) <= size for section in sections)


def test_split_sections_prefers_paragraph_breaks():
    text = _paragraphs(40)
    sections = list(split_sections(_blocks(text, 1000), 2000))

    assert len(sections) > 3
    assert all(section.endswith("\n\n") for section in sections[:-1])


def test_split_sections_rejects_zero_size():
    with pytest.raises(ConfigError, match="at least 1"):
        list(split_sections(["abc"], 0))


# -- decoding as a stream --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("crlf.txt", ("line one\r\nline two\r\r\n" * 50).encode("utf-8")),
        ("utf8.txt", ("Zürich, 東京 and 🚢 ships\n" * 40).encode("utf-8")),
        (
            "bom16.txt",
            codecs.BOM_UTF16_LE + ("Crème brûlée\r\n" * 40).encode("utf-16-le"),
        ),
        ("bom8.txt", codecs.BOM_UTF8 + ("naïve café\n" * 40).encode("utf-8")),
        ("latin1.txt", ("Déjà vu à la crème, garçon\n" * 40).encode("cp1252")),
        ("mixed.txt", "Zürich café ".encode() + b"\x96 dash " + ("ok\n" * 30).encode()),
    ],
)
def test_stream_decoding_matches_whole_file(tmp_path, monkeypatch, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    whole = formats.read_text(path, name)
    # Odd block sizes split CRLF pairs and multi-byte characters.
    for block in (1, 3, 7, 64):
        monkeypatch.setattr(formats, "STREAM_BLOCK_BYTES", block)
        assert "".join(formats.iter_text_blocks(path, name)) == whole, block


def test_stream_rejects_binary(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_bytes(b"header\x00\x01\x02" * 100)

    with pytest.raises(LoadError, match="NUL bytes"):
        list(formats.iter_text_blocks(path, "blob.txt"))


def test_stream_rejects_file_broken_after_its_start(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_SNIFF_BYTES", 64)
    monkeypatch.setattr(formats, "STREAM_BLOCK_BYTES", 64)
    path = tmp_path / "broken16.txt"
    # An unpaired high surrogate in UTF-16 after the sniffed start.
    good = codecs.BOM_UTF16_LE + ("text " * 40).encode("utf-16-le")
    path.write_bytes(good + b"\x00\xd8" + "a".encode("utf-16-le"))

    with pytest.raises(LoadError, match=r"not valid UTF-16 near byte 40\d"):
        list(formats.iter_text_blocks(path, "broken16.txt"))


# -- section documents -------------------------------------------------------------


def test_large_file_becomes_section_documents(tmp_path):
    text = _paragraphs(60)
    (tmp_path / "log.txt").write_text(text, encoding="utf-8")
    (tmp_path / "small.txt").write_text("A short note.", encoding="utf-8")

    documents = list(iter_documents([tmp_path], section_chars=1500))
    sections = [document for document in documents if document.source == "log.txt"]

    assert [document.id for document in sections[:3]] == [
        "log.txt", "log.txt#section-2", "log.txt#section-3",
    ]  # fmt: skip
    assert "".join(document.text for document in sections) == text
    for document in sections:
        start = document.metadata["section_start"]
        assert text[start : start + len(document.text)] == document.text
        assert len(document.text) <= 1500
        assert document.title == "log"
    assert [d.metadata["section"] for d in sections] == list(
        range(1, len(sections) + 1)
    )
    small = [document for document in documents if document.source == "small.txt"]
    assert small[0].id == "small.txt"
    assert "section" not in small[0].metadata
    assert count_documents([tmp_path], section_chars=1500) is None
    assert count_documents([tmp_path / "small.txt"], section_chars=1500) == 1


def test_large_markdown_keeps_title_and_skips_blank_sections(tmp_path):
    text = (
        "# Pilot log\n\n" + _paragraphs(10) + "\n" + " " * 3000 + "\n" + _paragraphs(5)
    )
    (tmp_path / "log.md").write_text(text, encoding="utf-8")
    skipped = []

    documents = list(
        iter_documents([tmp_path], section_chars=1000, on_skip=skipped.append)
    )

    assert skipped == []
    assert all(document.title == "Pilot log" for document in documents)
    assert all(document.text.strip() for document in documents)
    numbers = [document.metadata["section"] for document in documents]
    assert numbers != list(range(1, len(numbers) + 1)), "a blank section was kept"
    assert "".join(document.text for document in documents).split() == text.split()


def test_large_blank_file_is_skipped(tmp_path):
    (tmp_path / "blank.txt").write_text(" \n" * 5000, encoding="utf-8")
    skipped = []

    documents = list(
        iter_documents([tmp_path], section_chars=1000, on_skip=skipped.append)
    )

    assert documents == []
    assert [(item.source, item.reason) for item in skipped] == [
        ("blank.txt", "empty document; it has no text to index")
    ]


def test_large_undecodable_file_yields_nothing(tmp_path):
    data = codecs.BOM_UTF8 + b"valid start " * 200 + b"\xff\xfe bad"
    (tmp_path / "bad.txt").write_bytes(data)
    (tmp_path / "good.txt").write_text(_paragraphs(30), encoding="utf-8")
    skipped = []

    documents = list(
        iter_documents([tmp_path], section_chars=1000, on_skip=skipped.append)
    )

    assert {document.source for document in documents} == {"good.txt"}
    assert [item.source for item in skipped] == ["bad.txt"]
    assert "UTF-8-SIG near byte" in skipped[0].reason


def test_sectioned_file_syncs_section_by_section(tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(loaders, "SECTION_CHARS", 1200)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    path = corpus / "log.txt"
    path.write_text(_paragraphs(20), encoding="utf-8")
    with SemanticSearch(
        uri=str(tmp_path / "sections.db"), encoder=encoder, chunk_overlap=0
    ) as engine:
        first = engine.ingest([corpus])
        unchanged = engine.ingest([corpus])
        path.write_text(_paragraphs(20) + "\n\nA late entry: the pilot went home.")
        appended = engine.ingest([corpus])
        rows = engine.store.query("", ["doc_id", "text", "ordinal", "metadata"])

    assert first.documents == first.new > 2
    assert unchanged.embedded == 0
    assert unchanged.unchanged == first.documents
    # The new modification time rewrites every section's rows, but only the
    # last section's text changed, so only its chunk is embedded again.
    assert appended.documents == first.documents
    assert appended.embedded == 1
    assert appended.reused == first.chunks - 1
    by_section: dict[int, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["metadata"]["section"], []).append(row)
    stored_text = ""
    for number in sorted(by_section):
        chunks = sorted(by_section[number], key=lambda row: row["ordinal"])
        stored_text += " ".join(row["text"] for row in chunks) + " "
    assert stored_text.split() == path.read_text().split()


def test_nul_after_sniffed_start_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_SNIFF_BYTES", 64)
    monkeypatch.setattr(formats, "STREAM_BLOCK_BYTES", 64)
    path = tmp_path / "late-nul.txt"
    path.write_bytes(b"plain text line\n" * 20 + b"tail \x00 byte\n")
    skipped = []

    documents = list(iter_documents([path], section_chars=100, on_skip=skipped.append))

    assert documents == []
    assert len(skipped) == 1
    assert "NUL bytes" in skipped[0].reason


def test_detection_falls_back_to_next_encoding(tmp_path, monkeypatch):
    # Western text sniffs as cp1252, but 0x81 after the sniffed start is
    # undefined there; read_text then takes the next detected encoding.
    monkeypatch.setattr(formats, "_SNIFF_BYTES", 256)
    monkeypatch.setattr(formats, "STREAM_BLOCK_BYTES", 64)
    path = tmp_path / "late-81.txt"
    line = "Café crème, naïve déjà vu.\n".encode("cp1252")
    path.write_bytes(line * 20 + b"x \x81 y\n")
    skipped = []

    documents = list(iter_documents([path], section_chars=100, on_skip=skipped.append))

    assert skipped == []
    assert sum(document.text.count("\n") for document in documents) == 21
    assert documents[0].text.startswith("Caf")
    assert "x " in documents[-1].text


@pytest.mark.parametrize("size", [0, -1])
def test_invalid_section_size_rejected(tmp_path, size):
    (tmp_path / "a.txt").write_text("text", encoding="utf-8")

    with pytest.raises(ConfigError, match=f"invalid section size {size}"):
        list(iter_documents([tmp_path], section_chars=size))
    with pytest.raises(ConfigError, match=f"invalid section size {size}"):
        count_documents([tmp_path], section_chars=size)
