"""BM25 text analysis: stop words, stemming, the stem cache and thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from snowballstemmer.english_stemmer import EnglishStemmer

from semsearch import lexical

TEXTS = [
    "The international committee internalized the interval rules.",
    "Running runners ran; the runner's run was interrupted by interference.",
    "Insulin resistance develops when cells stop responding to insulin.",
    "Généralement, les données météorologiques sont publiées chaque jour.",
]


def test_analyze_drops_stop_words_and_stems():
    assert lexical.analyze("The cats are running into the houses") == [
        "cat", "run", "hous",
    ]  # fmt: skip


def test_analyze_matches_pure_python_stemmer():
    stemmer = EnglishStemmer()
    for text in TEXTS:
        words = [
            word
            for word in lexical._WORD.findall(text.lower())
            if word not in lexical.STOP_WORDS
        ]
        # Twice: the first call fills the stem cache, the second reads it.
        assert lexical.analyze(text) == stemmer.stemWords(words)
        assert lexical.analyze(text) == stemmer.stemWords(words)


def test_analyze_keeps_snowball_stems_of_inter_words():
    # PyStemmer 3.0 would give "intern" for both; semsearch never uses it.
    assert lexical.analyze("international internal") == ["internat", "internal"]


def test_analyze_cache_overflow_clears(monkeypatch):
    monkeypatch.setattr(lexical, "_STEMS", {})
    monkeypatch.setattr(lexical, "_STEMS_MAX", 3)

    first = lexical.analyze("alpha beta gamma")
    second = lexical.analyze("delta epsilon")

    assert first == ["alpha", "beta", "gamma"]
    assert second == ["delta", "epsilon"]
    assert set(lexical._STEMS) == {"delta", "epsilon"}


def test_analyze_threads_agree_with_sequential(monkeypatch):
    monkeypatch.setattr(lexical, "_STEMS", {})
    texts = [f"{text} {number}" for number in range(200) for text in TEXTS]
    sequential = [lexical.analyze(text) for text in texts]
    lexical._STEMS.clear()

    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lexical.analyze, texts))

    assert threaded == sequential
