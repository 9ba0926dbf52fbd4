"""The sync notices changed chunking settings and metadata, not only changed text."""

from __future__ import annotations

from semsearch import SemanticSearch

TEXT = "\n\n".join(
    f"Paragraph {i}: lighthouses, harbours and the ships that pass them at night."
    for i in range(12)
)


def test_new_chunk_size_rechunks(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT, encoding="utf-8")
    uri = str(tmp_path / "sync.db")
    with SemanticSearch(uri=uri, encoder=encoder, chunk_size=128, chunk_overlap=0) as engine:
        engine.ingest([corpus])
        before = engine.stats()["rows"]
    with SemanticSearch(uri=uri, encoder=encoder, chunk_size=32, chunk_overlap=0) as engine:
        report = engine.ingest([corpus])
        after = engine.stats()["rows"]
    assert report.changed == 1
    assert report.unchanged == 0
    assert after > before


def test_same_settings_unchanged(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT, encoding="utf-8")
    uri = str(tmp_path / "sync.db")
    with SemanticSearch(uri=uri, encoder=encoder, chunk_size=64) as engine:
        engine.ingest([corpus])
        report = engine.ingest([corpus])
    assert report.unchanged == 1
    assert report.embedded == 0


def test_metadata_change_rewrites_without_embedding(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT, encoding="utf-8")
    uri = str(tmp_path / "sync.db")
    with SemanticSearch(uri=uri, encoder=encoder, chunk_size=64) as engine:
        engine.ingest([corpus], metadata={"team": "harbour"})
        report = engine.ingest([corpus], metadata={"team": "coastguard"})
        hits = engine.search("lighthouses", k=3, where={"team": "coastguard"})
    assert report.changed == 1
    assert report.embedded == 0
    assert report.reused > 0
    assert len(hits) == 3
