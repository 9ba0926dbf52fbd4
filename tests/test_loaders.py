"""Tests for the loading stage: folder walks, formats, decoding and skips."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from semsearch.errors import ConfigError, LoadError
from semsearch.formats import html_to_text, markdown_title, to_json_safe
from semsearch.loaders import (
    SUPPORTED_SUFFIXES,
    SkippedInput,
    iter_documents,
    parse_meta_pairs,
)
from semsearch.types import Document

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_DOCS = ("txt/**", "md/**", "html/**")

needs_samples = pytest.mark.skipif(
    not (SAMPLES / "manifest.jsonl").exists(),
    reason=f"sample documents not found at {SAMPLES}",
)


def load(
    *paths: Path, **options: object
) -> tuple[dict[str, Document], list[SkippedInput]]:
    """Load paths, returning documents by id and the skipped inputs."""
    skipped: list[SkippedInput] = []
    documents = iter_documents(paths, on_skip=skipped.append, **options)
    return {document.id: document for document in documents}, skipped


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def samples() -> dict[str, Document]:
    if not (SAMPLES / "manifest.jsonl").exists():
        pytest.skip(f"sample documents not found at {SAMPLES}")
    documents, skipped = load(SAMPLES, include=SAMPLE_DOCS)
    assert skipped == []
    return documents


# --- real samples -------------------------------------------------------------


@needs_samples
def test_samples_load_all_documents(samples: dict[str, Document]) -> None:
    assert len(samples) == 69


@needs_samples
def test_samples_formats_by_folder(samples: dict[str, Document]) -> None:
    formats = [document.metadata["format"] for document in samples.values()]
    assert formats.count("text") == 26
    assert formats.count("markdown") == 22
    assert formats.count("html") == 21


@needs_samples
def test_samples_manifest_title_and_year(samples: dict[str, Document]) -> None:
    document = samples["txt/sotu-1961-Kennedy.txt"]
    assert document.title == "State of the Union Address, 1961 (John F. Kennedy)"
    assert document.metadata["year"] == 1961
    assert document.metadata["author"] == "John F. Kennedy"
    assert "date" not in document.metadata  # null in the manifest


@needs_samples
def test_samples_manifest_category(samples: dict[str, Document]) -> None:
    rust = [doc for doc in samples.values() if doc.source.startswith("md/")]
    categories = {document.metadata["category"] for document in rust}
    assert categories == {"software documentation/book chapter"}


@needs_samples
def test_samples_manifest_file_keys_left_out(samples: dict[str, Document]) -> None:
    metadata = samples["md/rust-book-ch08-02-strings.md"].metadata
    for key in ("path", "sha256", "bytes", "license", "source", "id", "title"):
        assert key not in metadata, key
    assert metadata["format"] == "markdown"


@needs_samples
def test_samples_manifest_not_loaded_as_records() -> None:
    documents, skipped = load(SAMPLES)
    assert not any(doc_id.startswith("manifest.jsonl") for doc_id in documents)
    assert skipped == []


@needs_samples
def test_samples_document_fields(samples: dict[str, Document]) -> None:
    document = samples["html/sqlite-wal.html"]
    assert document.source == "html/sqlite-wal.html"
    digest = hashlib.sha256(document.text.encode("utf-8")).hexdigest()
    assert document.content_hash == digest
    modified = dt.datetime.fromisoformat(document.metadata["modified"])
    assert modified.utcoffset() == dt.timedelta(0)


@needs_samples
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sotu-2008-GWBush.txt", "\u2014"),  # em dash
        ("sotu-2010-Obama.txt", "na\u00efve"),  # "naïve"
        ("sotu-2010-Obama.txt", "\u2026"),  # ellipsis
        ("sotu-2012-Obama.txt", "\u201c"),  # left double quotation mark
        ("sotu-2012-Obama.txt", "\u2019"),  # right single quotation mark
    ],
)
def test_samples_cp1252_characters(
    samples: dict[str, Document], name: str, expected: str
) -> None:
    assert expected in samples[f"txt/{name}"].text


@needs_samples
def test_samples_cp1252_no_replacement_or_c1(samples: dict[str, Document]) -> None:
    for name in ("sotu-2008-GWBush", "sotu-2010-Obama", "sotu-2012-Obama"):
        text = samples[f"txt/{name}.txt"].text
        assert "\ufffd" not in text, name
        assert not any("\x80" <= char <= "\x9f" for char in text), name


@needs_samples
def test_samples_html_visible_text_only(samples: dict[str, Document]) -> None:
    document = samples["html/sqlite-about.html"]
    assert document.title == "About SQLite"
    assert "SQLite is an in-process library" in document.text
    assert "toggle_div" not in document.text  # script
    assert "Search Documentation" not in document.text  # search form
    assert "Choose any three" not in document.text  # tagline in the menu block
    assert "Purchase" not in document.text  # main menu


@needs_samples
def test_samples_html_paragraph_breaks(samples: dict[str, Document]) -> None:
    text = samples["html/sqlite-about.html"].text
    paragraph = "SQLite is an embedded SQL database engine."
    assert f"\n\n{paragraph}" in text


@needs_samples
def test_samples_html_table_of_contents_dropped(
    samples: dict[str, Document],
) -> None:
    text = samples["html/sqlite-atomiccommit.html"].text
    assert "Table Of Contents" not in text
    assert text.startswith("1. Introduction")


@needs_samples
def test_samples_markdown_kept_raw(samples: dict[str, Document]) -> None:
    path = SAMPLES / "md" / "rust-book-ch15-01-box.md"
    raw = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    assert samples["md/rust-book-ch15-01-box.md"].text == raw


@needs_samples
def test_samples_single_file_source_is_name() -> None:
    documents, _ = load(SAMPLES / "txt" / "sotu-1961-Kennedy.txt")
    document = documents["sotu-1961-Kennedy.txt"]
    assert document.source == "sotu-1961-Kennedy.txt"
    assert document.title == "sotu-1961-Kennedy"  # no manifest for single files


# --- folder walks and filters -------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write(root / "b.txt", "bee")
    write(root / "a.md", "# Alpha\n\nfirst")
    write(root / "sub" / "c.txt", "sea")
    write(root / "sub" / "deep" / "d.html", "<p>dee</p>")
    write(root / "sub" / "notes.rst", "ignored: unsupported suffix")
    write(root / ".hidden.txt", "hidden file")
    write(root / ".git" / "e.txt", "hidden folder")
    return root


def test_walk_sorted_recursive_order(tree: Path) -> None:
    documents, skipped = load(tree)
    assert list(documents) == ["a.md", "b.txt", "sub/c.txt", "sub/deep/d.html"]
    assert skipped == []


def test_walk_include_by_name(tree: Path) -> None:
    documents, _ = load(tree, include=["*.txt"])
    assert list(documents) == ["b.txt", "sub/c.txt"]


def test_walk_include_double_star(tree: Path) -> None:
    documents, _ = load(tree, include=["sub/**"])
    assert list(documents) == ["sub/c.txt", "sub/deep/d.html"]


def test_walk_single_star_stays_in_folder(tree: Path) -> None:
    documents, _ = load(tree, include=["sub/*"])
    assert list(documents) == ["sub/c.txt"]


def test_walk_leading_double_star(tree: Path) -> None:
    documents, _ = load(tree, include=["**/d.html", "**/a.md"])
    assert list(documents) == ["a.md", "sub/deep/d.html"]


def test_walk_exclude_folder(tree: Path) -> None:
    documents, _ = load(tree, exclude=["sub/"])
    assert list(documents) == ["a.md", "b.txt"]


def test_walk_exclude_wins_over_include(tree: Path) -> None:
    documents, _ = load(tree, include=["*.txt"], exclude=["sub/c.txt"])
    assert list(documents) == ["b.txt"]


def test_walk_character_class(tree: Path) -> None:
    documents, _ = load(tree, include=["[!a]*"])
    assert list(documents) == ["b.txt", "sub/c.txt", "sub/deep/d.html"]


def test_walk_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(LoadError, match="nope: file or folder not found"):
        list(iter_documents([missing]))


def test_walk_missing_path_checked_first(tree: Path, tmp_path: Path) -> None:
    documents = iter_documents([tree, tmp_path / "typo"])
    with pytest.raises(LoadError, match="typo"):
        next(documents)


def test_walk_given_unsupported_file_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.rst", "text")
    documents, skipped = load(path)
    assert documents == {}
    assert skipped[0].source == "notes.rst"
    assert "unsupported file type '.rst'" in skipped[0].reason


def test_walk_several_paths(tree: Path, tmp_path: Path) -> None:
    single = write(tmp_path / "single.txt", "one")
    documents, _ = load(single, tree / "sub")
    assert list(documents) == ["single.txt", "c.txt", "deep/d.html"]


def test_supported_suffixes_cover_formats() -> None:
    for suffix in (".txt", ".md", ".html", ".jsonl", ".csv", ".parquet", ".pdf"):
        assert suffix in SUPPORTED_SUFFIXES, suffix


def test_documents_stable_across_runs(tree: Path) -> None:
    first, _ = load(tree)
    second, _ = load(tree)
    assert first == second


def test_extra_metadata_added(tree: Path) -> None:
    documents, _ = load(tree, extra_metadata={"team": "search", "version": 2})
    for document in documents.values():
        assert document.metadata["team"] == "search"
        assert document.metadata["version"] == 2


# --- manifests ----------------------------------------------------------------


def test_manifest_in_subfolder(tmp_path: Path) -> None:
    entry = {"path": "x.txt", "title": "Ex", "year": 1999, "sha256": "00"}
    write(tmp_path / "sub" / "manifest.jsonl", json.dumps(entry) + "\n")
    write(tmp_path / "sub" / "x.txt", "text")
    documents, skipped = load(tmp_path)
    document = documents["sub/x.txt"]
    assert document.title == "Ex"
    assert document.metadata["year"] == 1999
    assert "sha256" not in document.metadata
    assert skipped == []


def test_manifest_malformed_line_skipped(tmp_path: Path) -> None:
    lines = ['{"path": "a.txt", "title": "A"}', "{broken", '{"title": "no path"}']
    write(tmp_path / "manifest.jsonl", "\n".join(lines) + "\n")
    write(tmp_path / "a.txt", "alpha")
    write(tmp_path / "b.txt", "beta")
    documents, skipped = load(tmp_path)
    assert documents["a.txt"].title == "A"
    assert documents["b.txt"].title == "b"
    assert [(s.source, s.line) for s in skipped] == [
        ("manifest.jsonl", 2),
        ("manifest.jsonl", 3),
    ]


def test_manifest_without_paths_loads_as_records(tmp_path: Path) -> None:
    write(tmp_path / "manifest.jsonl", '{"id": "r1", "text": "a record"}\n')
    documents, _ = load(tmp_path)
    assert list(documents) == ["manifest.jsonl#r1"]


# --- decoding and skipped files -----------------------------------------------


def test_decode_utf16_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "u16.txt", "caf\u00e9 \u2603\r\nline".encode("utf-16"))
    documents, _ = load(path)
    assert documents["u16.txt"].text == "caf\u00e9 \u2603\nline"


def test_decode_utf32_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "u32.txt", "na\u00efve".encode("utf-32"))
    documents, _ = load(path)
    assert documents["u32.txt"].text == "na\u00efve"


def test_decode_utf8_bom_removed(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.md", "\ufeff# Title\n".encode())
    documents, _ = load(path)
    assert documents["bom.md"].text == "# Title\n"
    assert documents["bom.md"].title == "Title"


def test_decode_line_endings_normalised(tmp_path: Path) -> None:
    path = write(tmp_path / "crlf.txt", b"one\r\ntwo\rthree\n")
    documents, _ = load(path)
    assert documents["crlf.txt"].text == "one\ntwo\nthree\n"


def test_decode_cp1252_handwritten(tmp_path: Path) -> None:
    text = "The \u201cquick\u201d fox \u2014 na\u00efve \u2026 it\u2019s done.\n" * 5
    path = write(tmp_path / "legacy.txt", text.encode("cp1252"))
    documents, _ = load(path)
    assert documents["legacy.txt"].text == text


def test_decode_cp1250_polish_kept(tmp_path: Path) -> None:
    text = (
        "Litwo! Ojczyzno moja! ty jeste\u015b jak zdrowie:\n"
        "Ile ci\u0119 trzeba ceni\u0107, ten tylko si\u0119 dowie,\n"
        "Kto ci\u0119 straci\u0142. Dzi\u015b pi\u0119kno\u015b\u0107 tw\u0105 "
        "w ca\u0142ej ozdobie\n"
    )
    path = write(tmp_path / "pl.txt", text.encode("cp1250"))
    documents, _ = load(path)
    assert documents["pl.txt"].text == text


@pytest.mark.parametrize(
    "text",
    [
        "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u00e0 la fran\u00e7aise, "
        "na\u00efve fa\u00e7ade.",
        "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u00e0 la fran\u00e7aise, "
        "na\u00efve fa\u00e7ade. D\u00e9j\u00e0 vu: le gar\u00e7on est "
        "tr\u00e8s content.",
        "D\u00e9j\u00e0 vu all over again: the gar\u00e7on said tr\u00e8s bien.",
        "\u00dcbung macht den Meister",
        "\u00c4rger \u00fcber \u00d6l",
    ],
)
def test_decode_latin1_western_text(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "latin1.txt", text.encode("latin-1"))
    documents, _ = load(path)
    assert documents["latin1.txt"].text == text


@pytest.fixture
def broken_folder(tmp_path: Path) -> Path:
    write(tmp_path / "good.txt", "good text")
    write(tmp_path / "binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(tmp_path / "garbled.txt", bytes(range(128, 256)) * 10)
    write(tmp_path / "empty.txt", " \n\t\n")
    lines = ['{"id": "a", "text": "first"}', "{not json", '{"id": "c", "text": "3"}']
    write(tmp_path / "records.jsonl", "\n".join(lines) + "\n")
    return tmp_path


def test_skip_broken_files_keeps_others(broken_folder: Path) -> None:
    documents, _ = load(broken_folder)
    expected = ["good.txt", "records.jsonl#a", "records.jsonl#c"]
    assert sorted(documents) == expected


def test_skip_binary_file(broken_folder: Path) -> None:
    _, skipped = load(broken_folder)
    reasons = {s.source: s.reason for s in skipped}
    assert "binary file" in reasons["binary.txt"]


def test_skip_undecodable_file(broken_folder: Path) -> None:
    _, skipped = load(broken_folder)
    reasons = {s.source: s.reason for s in skipped}
    assert "encoding could not be detected" in reasons["garbled.txt"]


def test_skip_empty_file(broken_folder: Path) -> None:
    _, skipped = load(broken_folder)
    reasons = {s.source: s.reason for s in skipped}
    assert reasons["empty.txt"].startswith("empty document")


def test_skip_malformed_jsonl_line(broken_folder: Path) -> None:
    _, skipped = load(broken_folder)
    bad = [s for s in skipped if s.source == "records.jsonl"]
    assert [s.line for s in bad] == [2]
    assert "not valid JSON" in bad[0].reason


def test_skip_logged_without_handler(
    broken_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="semsearch.loaders"):
        documents = list(iter_documents([broken_folder]))
    assert len(documents) == 3
    assert "skipped records.jsonl:2" in caplog.text
    assert "skipped binary.txt" in caplog.text


# --- markdown and html --------------------------------------------------------


def test_markdown_title_first_h1() -> None:
    text = "intro\n\n## Section\n\n# Real Title #\n\n# Second\n"
    assert markdown_title(text) == "Real Title"


def test_markdown_title_ignores_code_fence() -> None:
    text = "```sh\n# a shell comment\n```\n\n# Heading\n"
    assert markdown_title(text) == "Heading"


def test_markdown_title_setext() -> None:
    assert markdown_title("Big Title\n=========\n\nbody\n") == "Big Title"


def test_markdown_title_front_matter() -> None:
    text = "---\ntitle: From Front Matter\n---\n# Heading\n"
    assert markdown_title(text) == "From Front Matter"


def test_markdown_title_falls_back_to_stem(tmp_path: Path) -> None:
    path = write(tmp_path / "notes-2024.md", "## Only a subsection\n\ntext\n")
    documents, _ = load(path)
    assert documents["notes-2024.md"].title == "notes-2024"


PAGE = """<!doctype html>
<html><head><title> Tiny   Page </title>
<style>body { color: red }</style>
<script>var secret = "script text";</script></head>
<body>
<header><a href="/">Site header</a></header>
<nav><a href="/a">Nav link</a></nav>
<div class="menu"><a href="/b">Menu link</a></div>
<div id="breadcrumb">Home &gt; Docs</div>
<h1>Main Heading</h1>
<p>First   paragraph with <b>bold</b> and
<a href="#">a link</a>.</p>
<!-- a comment -->
<ul><li>one</li><li>two</li></ul>
<table><tr><th>key</th><th>value</th></tr><tr><td>a</td><td>1</td></tr></table>
<pre>def f():
    return 1</pre>
<noscript>Enable scripts</noscript>
<form><input name="q"><button>Go</button></form>
<aside>Related links</aside>
<footer>Copyright footer</footer>
</body></html>
"""


def test_html_title_from_title_tag() -> None:
    title, _ = html_to_text(PAGE)
    assert title == "Tiny Page"


def test_html_title_from_h1() -> None:
    title, _ = html_to_text("<body><h1>Only  H1</h1><p>x</p></body>")
    assert title == "Only H1"


@pytest.mark.parametrize(
    "hidden",
    [
        "script text",
        "color: red",
        "Site header",
        "Nav link",
        "Menu link",
        "Home > Docs",
        "a comment",
        "Enable scripts",
        "Go",
        "Related links",
        "Copyright footer",
        "Tiny Page",
    ],
)
def test_html_drops_invisible_and_chrome(hidden: str) -> None:
    _, text = html_to_text(PAGE)
    assert hidden not in text


def test_html_block_structure() -> None:
    _, text = html_to_text(PAGE)
    expected = (
        "Main Heading\n\n"
        "First paragraph with bold and a link.\n\n"
        "one\ntwo\n\n"
        "key | value\na | 1\n\n"
        "def f():\n    return 1"
    )
    assert text == expected


def test_html_file_title_and_format(tmp_path: Path) -> None:
    path = write(tmp_path / "page.html", PAGE)
    documents, _ = load(path)
    assert documents["page.html"].title == "Tiny Page"
    assert documents["page.html"].metadata["format"] == "html"


def test_html_declared_charset(tmp_path: Path) -> None:
    markup = '<meta charset="iso-8859-1"><p>Gr\u00fc\u00dfe aus K\u00f6ln</p>'
    path = write(tmp_path / "latin.htm", markup.encode("iso-8859-1"))
    documents, _ = load(path)
    assert documents["latin.htm"].text == "Gr\u00fc\u00dfe aus K\u00f6ln"


def test_html_without_text_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "chrome.html", "<nav>only navigation</nav>")
    documents, skipped = load(path)
    assert documents == {}
    assert skipped[0].reason.startswith("empty document")


# --- jsonl records ------------------------------------------------------------


def test_jsonl_ids_title_and_metadata(tmp_path: Path) -> None:
    lines = [
        {"id": 7, "title": "Seven", "text": "seventh", "tags": ["a", "b"]},
        {"_id": "doc-x", "text": "beir style", "score": 0.5},
        {"text": "no id", "nested": {"k": 1}},
    ]
    write(tmp_path / "r.ndjson", "\n".join(json.dumps(x) for x in lines) + "\n")
    documents, skipped = load(tmp_path)
    assert list(documents) == ["r.ndjson#7", "r.ndjson#doc-x", "r.ndjson#line-3"]
    assert documents["r.ndjson#7"].title == "Seven"
    assert documents["r.ndjson#7"].metadata["tags"] == ["a", "b"]
    assert documents["r.ndjson#doc-x"].title == "r.ndjson#doc-x"
    assert documents["r.ndjson#line-3"].metadata["nested"] == {"k": 1}
    assert documents["r.ndjson#7"].metadata["format"] == "jsonl"
    assert skipped == []


def test_jsonl_text_and_title_not_in_metadata(tmp_path: Path) -> None:
    write(tmp_path / "r.jsonl", '{"id": "1", "title": "T", "text": "body"}\n')
    documents, _ = load(tmp_path)
    metadata = documents["r.jsonl#1"].metadata
    assert "text" not in metadata
    assert "title" not in metadata
    assert metadata["id"] == "1"


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    write(tmp_path / "r.jsonl", '{"uid": "u1", "body": "hello", "name": "N"}\n')
    documents, _ = load(tmp_path, text_field="body", id_field="uid", title_field="name")
    document = documents["r.jsonl#u1"]
    assert document.text == "hello"
    assert document.title == "N"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": "x"}', "has no 'text' field (fields: id)"),
        ('{"text": 5}', "field 'text' has type int, not str"),
        ('{"text": null}', "'text' field is empty in this record"),
        ('{"text": "  "}', "empty document"),
        ("[1, 2]", "is a JSON list, not an object"),
        ('{"text": "lone \\ud800"}', "unpaired surrogate"),
    ],
)
def test_jsonl_bad_record_skipped(tmp_path: Path, line: str, reason: str) -> None:
    write(tmp_path / "r.jsonl", f'{{"text": "fine"}}\n{line}\n')
    documents, skipped = load(tmp_path)
    assert list(documents) == ["r.jsonl#line-1"]
    assert skipped[0].line == 2
    assert reason in skipped[0].reason


def test_jsonl_missing_id_field_skipped(tmp_path: Path) -> None:
    write(tmp_path / "r.jsonl", '{"uid": "a", "text": "x"}\n{"text": "y"}\n')
    documents, skipped = load(tmp_path, id_field="uid")
    assert list(documents) == ["r.jsonl#a"]
    assert "no usable 'uid' id" in skipped[0].reason


def test_jsonl_duplicate_id_skipped(tmp_path: Path) -> None:
    write(tmp_path / "r.jsonl", '{"id": 1, "text": "x"}\n{"id": 1, "text": "y"}\n')
    documents, skipped = load(tmp_path)
    assert documents["r.jsonl#1"].text == "x"
    assert "duplicate record id" in skipped[0].reason


def test_jsonl_nan_metadata_dropped(tmp_path: Path) -> None:
    write(tmp_path / "r.jsonl", '{"text": "x", "score": NaN, "none": null}\n')
    documents, _ = load(tmp_path)
    metadata = documents["r.jsonl#line-1"].metadata
    assert "score" not in metadata
    assert "none" not in metadata


# --- csv records --------------------------------------------------------------


def test_csv_rows_and_types(tmp_path: Path) -> None:
    content = (
        "id,text,year,price,flag,zip,note\n"
        'a,"multi\nline text",1999,1.5,true,007,\n'
        "b,plain,2001,2.0,false,123,hello\n"
    )
    write(tmp_path / "t.csv", content)
    documents, skipped = load(tmp_path)
    first = documents["t.csv#a"]
    assert first.text == "multi\nline text"
    assert first.metadata["year"] == 1999
    assert first.metadata["price"] == 1.5
    assert first.metadata["flag"] is True
    assert first.metadata["zip"] == "007"
    assert "note" not in first.metadata  # empty cell
    assert documents["t.csv#b"].metadata["note"] == "hello"
    assert skipped == []


def test_csv_bad_rows_numbered_from_header(tmp_path: Path) -> None:
    content = "text,title\nfirst,T1\n,missing text\nthird,T3,extra\nfourth,T4\n"
    write(tmp_path / "t.csv", content)
    documents, skipped = load(tmp_path)
    assert list(documents) == ["t.csv#line-2", "t.csv#line-5"]
    assert [s.line for s in skipped] == [3, 4]
    assert "has 3 fields but the header has 2" in skipped[1].reason


def test_csv_empty_text_cell_reason(tmp_path: Path) -> None:
    write(tmp_path / "t.csv", "id,text,title,year\n1,first,T1,2001\n2,,T2,2002\n")
    documents, skipped = load(tmp_path)
    assert list(documents) == ["t.csv#1"]
    assert skipped[0].line == 3
    assert "'text' field is empty in this record" in skipped[0].reason
    assert "has no 'text' field" not in skipped[0].reason


def test_csv_missing_text_column_names_option(tmp_path: Path) -> None:
    write(tmp_path / "t.csv", "id,body\n1,first\n")
    _, skipped = load(tmp_path)
    assert "has no 'text' field (fields: id, body)" in skipped[0].reason
    assert "--text-field (text_field= in Python)" in skipped[0].reason


def test_csv_cp1252_decoded(tmp_path: Path) -> None:
    content = "text\nCaf\u00e9 \u2014 cr\u00e8me\n"
    write(tmp_path / "t.csv", content.encode("cp1252"))
    documents, _ = load(tmp_path)
    assert documents["t.csv#line-2"].text == "Caf\u00e9 \u2014 cr\u00e8me"


# --- parquet records ----------------------------------------------------------


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": np.array([10, 11], dtype=np.int64),
            "text": ["first row", "second row"],
            "score": [np.nan, 0.25],
            "when": pd.to_datetime(["2024-01-02T03:04:05Z", None], utc=True),
            "tags": [["x", "y"], []],
            "count": np.array([3, 4], dtype=np.int32),
        }
    )
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    return path


def test_parquet_rows_loaded(parquet_file: Path) -> None:
    documents, skipped = load(parquet_file)
    assert list(documents) == ["t.parquet#10", "t.parquet#11"]
    assert skipped == []


def test_parquet_nan_dropped(parquet_file: Path) -> None:
    documents, _ = load(parquet_file)
    assert "score" not in documents["t.parquet#10"].metadata
    assert documents["t.parquet#11"].metadata["score"] == 0.25


def test_parquet_timestamp_iso(parquet_file: Path) -> None:
    documents, _ = load(parquet_file)
    when = documents["t.parquet#10"].metadata["when"]
    assert when == "2024-01-02T03:04:05+00:00"
    assert "when" not in documents["t.parquet#11"].metadata  # NaT


def test_parquet_ints_and_lists(parquet_file: Path) -> None:
    documents, _ = load(parquet_file)
    metadata = documents["t.parquet#10"].metadata
    assert type(metadata["count"]) is int
    assert metadata["tags"] == ["x", "y"]
    json.dumps(metadata)  # raises if anything is not JSON-serialisable


def test_parquet_missing_text_column(parquet_file: Path) -> None:
    documents, skipped = load(parquet_file, text_field="body")
    assert documents == {}
    assert "has no column 'body'" in skipped[0].reason
    assert "id, text, score, when, tags, count" in skipped[0].reason
    assert "--text-field (text_field= in Python)" in skipped[0].reason


def test_parquet_corrupt_file_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.parquet", b"PAR1 not really parquet")
    documents, skipped = load(path)
    assert documents == {}
    assert "not a readable Parquet file" in skipped[0].reason


# --- value conversion ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(5), 5),
        (np.float32(0.5), 0.5),
        (np.bool_(True), True),
        (np.array([1, 2]), [1, 2]),
        (np.datetime64("2024-01-02T03:04:05"), "2024-01-02T03:04:05"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.timedelta(minutes=1), 60.0),
        (Decimal(12), 12),
        (Decimal("1.25"), 1.25),
        ({"a": float("nan")}, {"a": None}),
        (b"bytes", None),
        (float("inf"), None),
        (np.datetime64("NaT"), None),
    ],
)
def test_to_json_safe_conversions(value: object, expected: object) -> None:
    assert to_json_safe(value) == expected


def test_to_json_safe_numpy_int_type() -> None:
    assert type(to_json_safe(np.int64(5))) is int


def test_to_json_safe_pandas_missing() -> None:
    import pandas as pd

    assert to_json_safe(pd.NaT) is None
    assert to_json_safe(pd.NA) is None


def test_to_json_safe_pyarrow_scalar() -> None:
    import pyarrow as pa

    assert to_json_safe(pa.scalar(3, type=pa.int16())) == 3


# --- pdf ----------------------------------------------------------------------


def minimal_pdf(text: str) -> bytes:
    """Build a one-page PDF that shows ``text`` in Helvetica, with a valid xref."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
        ),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Title (Handmade PDF) >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = b"<< /Size %d /Root 1 0 R /Info 6 0 R >>" % (len(objects) + 1)
    out += b"trailer\n%s\nstartxref\n%d\n%%%%EOF\n" % (trailer, xref)
    return bytes(out)


def test_pdf_text_and_title(tmp_path: Path) -> None:
    pytest.importorskip("pypdf")
    path = write(tmp_path / "doc.pdf", minimal_pdf("Hello from a PDF"))
    documents, skipped = load(path)
    assert skipped == []
    assert documents["doc.pdf"].text == "Hello from a PDF"
    assert documents["doc.pdf"].title == "Handmade PDF"
    assert documents["doc.pdf"].metadata["format"] == "pdf"


def test_pdf_without_pypdf_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pypdf", None)  # makes `import pypdf` fail
    path = write(tmp_path / "doc.pdf", minimal_pdf("unused"))
    documents, skipped = load(path)
    assert documents == {}
    assert "pip install pypdf" in skipped[0].reason


def test_pdf_corrupt_file_skipped(tmp_path: Path) -> None:
    pytest.importorskip("pypdf")
    path = write(tmp_path / "bad.pdf", b"%PDF-1.4\nnot a pdf body")
    documents, skipped = load(path)
    assert documents == {}
    assert skipped[0].source == "bad.pdf"


# --- parse_meta_pairs ---------------------------------------------------------


def test_parse_meta_pairs_values() -> None:
    pairs = ["team=search", "year=2024", "ratio=0.5", "draft=true", "zip=007", "e="]
    expected = {
        "team": "search",
        "year": 2024,
        "ratio": 0.5,
        "draft": True,
        "zip": "007",
        "e": "",
    }
    assert parse_meta_pairs(pairs) == expected


def test_parse_meta_pairs_value_with_equals() -> None:
    assert parse_meta_pairs(["query=a=b"]) == {"query": "a=b"}


def test_parse_meta_pairs_missing_equals() -> None:
    with pytest.raises(ConfigError, match="'novalue'.*key=value"):
        parse_meta_pairs(["novalue"])


@pytest.mark.parametrize("pair", ["=x", "1abc=x", "has space=x", "dash-key=x"])
def test_parse_meta_pairs_invalid_key(pair: str) -> None:
    with pytest.raises(ConfigError, match="invalid metadata key"):
        parse_meta_pairs([pair])


def test_count_documents_matches_loaded_samples():
    from semsearch.loaders import count_documents

    excludes = ["README.md", "LICENSES/*"]
    counted = count_documents([SAMPLES], exclude=excludes)
    loaded = list(iter_documents([SAMPLES], exclude=excludes))
    assert counted == len(loaded)
    assert counted == 69


def test_count_documents_unknown_with_records(tmp_path):
    from semsearch.loaders import count_documents

    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "beta"}\n', encoding="utf-8")
    assert count_documents([tmp_path]) is None
    assert count_documents([tmp_path], exclude=["*.jsonl"]) == 1
