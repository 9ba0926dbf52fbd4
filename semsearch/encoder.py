"""The encoder: turn queries and passages into L2-normalised embeddings.

It tokenises with the model's fast tokenizer, runs the transformer in a backend
(torch, or ONNX Runtime on CPU) and pools the token states itself, so the result
matches the model's sentence-transformers configuration without loading
sentence-transformers.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from semsearch.errors import ConfigError, ModelNotFoundError
from semsearch.models import ModelSpec, fingerprint, read_hidden_size, resolve_model
from semsearch.pooling import NORM_EPS, l2_normalize, pool

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    from semsearch.backends import OnnxBackend, TorchBackend

logger = logging.getLogger(__name__)

Device = str  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]
Backend = Literal["auto", "torch", "onnx"]
Kind = Literal["query", "passage"]
T = TypeVar("T")

VALID_DEVICES = '"auto", "cpu", "cuda", "cuda:N" (N a GPU index) or "mps"'
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
_BACKENDS = ("auto", "torch", "onnx")
# With prefetching on, texts are tokenised in windows of this many, so the
# prefetch thread tokenises the next window while the device runs this one.
PREFETCH_WINDOW = 4096
PREFETCH_DEPTH = 2
# Padded tokens per batch when batch_tokens is not given. On a GPU large batches
# keep the device busy. On CPU small batches run faster, because their
# activations stay in cache. On 256 SciFact passages with 2 cores, ONNX Runtime
# fp32 took 6.7 s with 512 tokens per batch against 8.3 s with 32 passages per
# batch, and torch was fastest near 2048 (benchmarks/encoder_throughput.py).
DEFAULT_BATCH_TOKENS = {"gpu": 16384, "cpu onnx": 512, "cpu torch": 2048}

__all__ = [
    "NORM_EPS",
    "Encoder",
    "default_batch_tokens",
    "l2_normalize",
    "plan_batches",
    "pool",
    "prefetch",
    "resolve_backend",
    "resolve_device",
    "resolve_precision",
]


class Encoder:
    """A sentence embedding model loaded for inference.

    Rows of every returned array are float32 and have unit L2 norm, whatever the
    model's own ``normalize`` setting, so dot products are cosine similarities.
    Texts are sorted by token length and packed into batches of at most
    ``batch_tokens`` padded tokens and ``max_batch_size`` rows. A text longer than
    ``batch_tokens`` still runs, alone in its batch. One text skips sorting and
    padding. ``batch_tokens`` defaults to ``default_batch_tokens()`` for the
    device and backend.

    Backend "auto" picks torch on CUDA and MPS, and ONNX Runtime on CPU when
    onnxruntime is installed (torch otherwise). The ONNX backend runs fp32 or
    dynamically quantised int8 weights, on CPU only.

    Precision "auto" means fp32 on CPU and MPS, and fp16 autocast on CUDA, where
    fp16 runs on every GPU with tensor cores. fp16 and bf16 run under
    ``torch.autocast`` with fp32 weights, so layer norms and softmax stay in fp32.
    bf16 is allowed on CPU, and fp16 is rejected there. int8 needs the ONNX
    backend and changes the fingerprint, because its vectors differ more.

    ``prefetch`` tokenises and copies the next batch on a thread while the
    current one runs. It defaults to on for CUDA, where the GPU would otherwise
    wait for that host work.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelSpec | None = None,
        *,
        device: Device = "auto",
        precision: Precision = "auto",
        backend: Backend = "auto",
        batch_tokens: int | None = None,
        max_batch_size: int = 256,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        prefetch: bool | None = None,
    ) -> None:
        if batch_tokens is not None:
            _check_positive("batch_tokens", batch_tokens)
        _check_positive("max_batch_size", max_batch_size)
        self.device: str = resolve_device(device)
        self.backend: str = resolve_backend(backend, self.device, precision)
        self.precision = resolve_precision(precision, self.device, self.backend)
        self.batch_tokens = batch_tokens or default_batch_tokens(
            self.device, self.backend
        )
        self.max_batch_size = max_batch_size
        self.prefetch = self.device.startswith("cuda") if prefetch is None else prefetch
        # encode() and count_tokens() run one call at a time, so that concurrent
        # callers do not interleave batches on one device.
        self._lock = threading.RLock()

        self.spec = _resolve_spec(model, query_prefix, passage_prefix)
        self.max_seq_length = self.spec.max_seq_length
        self._tokenizers = _TokenizerSet(self.spec)
        self._backend = self._load_backend()
        self.dim: int = getattr(self._backend, "dim", None) or read_hidden_size(
            self.spec.path
        )
        quantization = "int8" if self.precision == "int8" else None
        self.fingerprint: dict[str, object] = fingerprint(
            self.spec, self.dim, quantization=quantization
        )
        self._transformers_tokenizer: PreTrainedTokenizerBase | None = None

        # Content tokens that a passage can have before the model truncates it.
        prefix_tokens = self.count_tokens(self.spec.passage_prefix)
        special_tokens = self._tokenizers.special_tokens
        self.max_passage_tokens = self.max_seq_length - special_tokens - prefix_tokens

        logger.info(
            "Loaded model %s from %s with %s on %s (%s)",
            self.spec.name,
            self.spec.path,
            self.backend,
            self.device,
            self.precision,
        )

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's transformers tokenizer, loaded on first use for chunking.

        The encoder itself tokenises with the ``tokenizers`` library, so search
        never imports transformers.
        """
        if self._transformers_tokenizer is None:
            self._transformers_tokenizer = _load_tokenizer(self.spec)
        return self._transformers_tokenizer

    @property
    def onnx_path(self) -> Path | None:
        """The ONNX file that the ONNX backend runs, or None for torch."""
        return getattr(self._backend, "path", None)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages, with the passage prefix prepended to each."""
        return self.encode(texts, kind="passage")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries, with the query prefix prepended to each."""
        return self.encode(texts, kind="query")

    def encode(self, texts: Sequence[str], *, kind: Kind = "passage") -> np.ndarray:
        """Embed texts as a float32 array of shape ``(len(texts), dim)``.

        Rows come back in input order and have unit L2 norm. Inputs longer than
        ``max_seq_length`` tokens are truncated with a warning, because callers
        are expected to chunk them first.
        """
        return self.encode_counted(texts, kind=kind)[0]

    def encode_counted(
        self, texts: Sequence[str], *, kind: Kind = "passage"
    ) -> tuple[np.ndarray, int]:
        """Embed texts as ``encode`` does, and count the tokens the model read.

        The count includes the prefix and the special tokens, and is taken from
        the tokenisation the encoder does anyway, so it costs nothing extra.
        """
        if isinstance(texts, str):
            raise TypeError(
                "encode() expects a sequence of strings but got a single str. "
                "Wrap it in a list."
            )
        if kind not in ("query", "passage"):
            raise ConfigError(f"Invalid kind {kind!r}. Use 'query' or 'passage'.")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32), 0

        prefix = self.spec.query_prefix if kind == "query" else self.spec.passage_prefix
        inputs = [prefix + text for text in texts]
        with self._lock:
            if len(inputs) == 1:
                return self._encode_one(inputs[0])
            embeddings = np.empty((len(inputs), self.dim), dtype=np.float32)
            tokens = 0
            batches = self._prepared_batches(inputs)
            if self.prefetch:
                batches = prefetch(batches, PREFETCH_DEPTH)
            for indices, prepared, batch_token_count in batches:
                embeddings[indices] = self._backend.run(prepared)
                tokens += batch_token_count
        return embeddings, tokens

    def count_tokens(self, text: str) -> int:
        """Count the tokens of ``text`` without special tokens or prefix."""
        encoding = self._tokenizers.plain.encode(text, add_special_tokens=False)
        return len(encoding.ids)

    def _load_backend(self) -> TorchBackend | OnnxBackend:
        from semsearch.backends import OnnxBackend, TorchBackend

        if self.backend == "onnx":
            precision: Literal["fp32", "int8"] = (
                "int8" if self.precision == "int8" else "fp32"
            )
            return OnnxBackend(self.spec, precision)
        return TorchBackend(self.spec, self.device, self.precision)

    def _encode_one(self, text: str) -> tuple[np.ndarray, int]:
        """Embed one text as a batch of one: no sorting, no padding."""
        (ids,) = self._tokenize([text])
        input_ids = np.asarray([ids], dtype=np.int64)
        attention_mask = np.ones_like(input_ids)
        prepared = self._backend.prepare(input_ids, attention_mask)
        return self._backend.run(prepared), len(ids)

    def _prepared_batches(
        self, texts: list[str]
    ) -> Iterator[tuple[list[int], Any, int]]:
        """Yield each batch's input positions, its tensors and its token count.

        Without prefetching, all texts form one window, so length sorting sees
        every text and a truncation warning covers the whole call.
        """
        window = PREFETCH_WINDOW if self.prefetch else len(texts)
        for start in range(0, len(texts), window):
            rows = self._tokenize(texts[start : start + window])
            lengths = [len(row) for row in rows]
            for batch in plan_batches(lengths, self.batch_tokens, self.max_batch_size):
                input_ids, attention_mask = self._pad([rows[i] for i in batch])
                prepared = self._backend.prepare(input_ids, attention_mask)
                tokens = sum(lengths[i] for i in batch)
                yield [start + i for i in batch], prepared, tokens

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Tokenise to token ids, truncating at max_seq_length with one warning."""
        limit = self.max_seq_length
        # One token over the limit shows which texts the real truncation cuts.
        probe = self._tokenizers.probe.encode_batch(texts)
        rows = [encoding.ids for encoding in probe]
        long_rows = [i for i, row in enumerate(rows) if len(row) > limit]
        if not long_rows:
            return rows

        logger.warning(
            "Truncated %d of %d inputs to %d tokens. Split long texts into chunks "
            "before encoding",
            len(long_rows),
            len(texts),
            limit,
        )
        cut = self._tokenizers.truncating.encode_batch([texts[i] for i in long_rows])
        for position, i in enumerate(long_rows):
            rows[i] = cut[position].ids
        return rows

    def _pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pad rows to the longest on the tokenizer's padding side, as int64 arrays."""
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self._tokenizers.pad_id, np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        left = self._tokenizers.padding_side == "left"
        for index, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[index, span] = row
            attention_mask[index, span] = 1
        return input_ids, attention_mask


class _TokenizerSet:
    """The model's fast tokenizer, in three copies that are never reconfigured.

    ``plain`` neither truncates nor pads, ``probe`` truncates one token past
    max_seq_length and ``truncating`` truncates at it. Each copy keeps one
    configuration for its lifetime, so threads can share them.
    """

    def __init__(self, spec: ModelSpec) -> None:
        definition = _tokenizer_json(spec)
        self.plain = _build_tokenizer(definition, None)
        self.probe = _build_tokenizer(definition, spec.max_seq_length + 1)
        self.truncating = _build_tokenizer(definition, spec.max_seq_length)
        self.special_tokens = int(self.plain.num_special_tokens_to_add(False))
        config = _read_tokenizer_config(spec.path)
        self.padding_side = str(config.get("padding_side") or "right")
        self.pad_id = _pad_token_id(self.plain, config)


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items`` in order while a thread computes up to ``depth`` ahead.

    An exception in the producer is raised here. Closing the returned generator
    early stops the producer thread.
    """
    buffer: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((False, item)):
                    return
        except BaseException as exc:  # noqa: BLE001 (the consumer raises it)
            offer((True, exc))
            return
        offer((True, None))

    thread = threading.Thread(target=produce, name="semsearch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            finished, value = buffer.get()
            if finished:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()


def default_batch_tokens(device: str, backend: str) -> int:
    """Return the padded tokens per batch that suit ``device`` and ``backend``."""
    if device != "cpu":
        return DEFAULT_BATCH_TOKENS["gpu"]
    return DEFAULT_BATCH_TOKENS[f"cpu {backend}"]


def plan_batches(
    lengths: Sequence[int], batch_tokens: int, max_batch_size: int
) -> list[list[int]]:
    """Group indices into batches of similar length, longest first.

    A batch's padded size (rows times its longest length) stays within
    ``batch_tokens`` unless a single row is longer than that on its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # NOTE: order is descending, so current[0] is the longest row in the batch.
        width = lengths[current[0]] if current else lengths[index]
        full = len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * width > batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def resolve_device(device: Device) -> str:
    """Turn a device option into a concrete torch device string.

    "auto" picks CUDA, then MPS, then CPU, and returns "cpu" without importing
    torch on a machine with no GPU driver. Raises ConfigError for an invalid
    string or a device that this machine does not have.
    """
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ConfigError(f"Invalid device {device!r}. Use {VALID_DEVICES}.")
    if device == "cpu" or (device == "auto" and not _may_have_accelerator()):
        return "cpu"

    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda"):
        return _resolve_cuda(device)
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("Device 'mps' is not available on this machine. Use 'cpu'.")
    return device


def _may_have_accelerator() -> bool:
    """Tell, without importing torch, whether torch could find a GPU here.

    Importing torch takes seconds, which a CPU-only search should not pay.
    """
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    if sys.platform.startswith("linux"):
        # NOTE: the NVIDIA driver and ROCm's kernel driver create these. A GPU
        # that shows none of them is missed by "auto"; pass --device cuda.
        markers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")
        return any(Path(marker).exists() for marker in markers)
    return True


def _resolve_cuda(device: str) -> str:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} requested but CUDA is not available "
            f"(torch {torch.__version__}). Use 'cpu' or 'auto'."
        )
    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    index = int(device.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"Device {device!r} does not exist because this machine has {count} CUDA "
            f"device(s), cuda:0 to cuda:{count - 1}."
        )
    return device


def resolve_backend(backend: Backend, device: str, precision: str) -> str:
    """Pick "torch" or "onnx" for a resolved device, following the rule in the Encoder docstring."""
    from semsearch.backends import onnxruntime_installed

    if backend not in _BACKENDS:
        raise ConfigError(
            f"Invalid backend {backend!r}. Use one of {list(_BACKENDS)!r}."
        )
    if backend == "torch":
        return "torch"
    if backend == "onnx":
        if device != "cpu":
            raise ConfigError(
                f"The ONNX backend runs on CPU only, not on {device!r}. Use "
                "--backend torch for this device, or --device cpu."
            )
        if not onnxruntime_installed():
            raise ConfigError(
                "The ONNX backend needs onnxruntime, which is not installed. "
                "Install it with: pip install 'semsearch[onnx]'"
            )
        return "onnx"
    if device != "cpu" or precision in ("fp16", "bf16"):
        return "torch"
    if onnxruntime_installed():
        return "onnx"
    return "torch"


def resolve_precision(precision: Precision, device: str, backend: str = "torch") -> str:
    """Pick the compute precision for ``device``, as the Encoder docstring describes."""
    if precision not in _PRECISIONS:
        raise ConfigError(
            f"Invalid precision {precision!r}. Use one of {list(_PRECISIONS)!r}."
        )
    if backend == "onnx":
        if precision in ("fp16", "bf16"):
            raise ConfigError(
                f"Precision {precision!r} is not supported by the ONNX backend. "
                "Use 'fp32' or 'int8', or --backend torch."
            )
        return "int8" if precision == "int8" else "fp32"
    if precision == "int8":
        raise ConfigError(
            "Precision 'int8' needs the ONNX backend on CPU. Use --backend onnx "
            "--device cpu, or 'fp32', 'fp16' or 'bf16' with torch."
        )
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError(
            "Precision 'fp16' is not supported on CPU. Use 'fp32' or 'bf16'."
        )
    if precision == "bf16" and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"Precision 'bf16' is not supported on {device!r}. Use 'fp16'."
            )
    # NOTE: fp16 and bf16 autocast on MPS are accepted but not covered by tests.
    return precision


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"Invalid {name} {value!r}. Use a positive integer.")


def _resolve_spec(
    model: str | os.PathLike[str] | ModelSpec | None,
    query_prefix: str | None,
    passage_prefix: str | None,
) -> ModelSpec:
    if not isinstance(model, ModelSpec):
        return resolve_model(
            model, query_prefix=query_prefix, passage_prefix=passage_prefix
        )
    if query_prefix is not None:
        model = replace(model, query_prefix=query_prefix)
    if passage_prefix is not None:
        model = replace(model, passage_prefix=passage_prefix)
    return model


def _tokenizer_json(spec: ModelSpec) -> str:
    """Return the fast tokenizer definition, converted by transformers if needed."""
    path = spec.path / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    # Models that ship only a vocabulary get a fast tokenizer built by
    # transformers, which is slower to load but gives the same tokens.
    return _load_tokenizer(spec).backend_tokenizer.to_str()


def _build_tokenizer(definition: str, max_length: int | None) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(definition)
    # tokenizer.json may carry its own padding and truncation settings, such as
    # all-MiniLM-L6-v2's 128 tokens. The encoder pads itself and truncates at the
    # model's max_seq_length.
    tokenizer.no_padding()
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length)
    return tokenizer


def _read_tokenizer_config(directory: Path) -> dict[str, Any]:
    import json

    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelNotFoundError(
            f"Model file {str(path)!r} is not valid JSON ({exc}). "
            "Copy the model files again."
        ) from exc
    return config if isinstance(config, dict) else {}


def _pad_token_id(tokenizer: Tokenizer, config: dict[str, Any]) -> int:
    """Return the pad token's id, or 0 when the tokenizer defines no pad token.

    Padded positions are masked out, so any valid id works there.
    """
    token = config.get("pad_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def _load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Cannot load the tokenizer of model {spec.name!r} from "
            f"{str(spec.path)!r}: {exc}. Check that the directory is complete."
        ) from exc
    if not tokenizer.is_fast:
        raise ConfigError(
            f"Model {spec.name!r} has no fast tokenizer (tokenizer.json), which "
            "semsearch needs for character offsets. Use a model that ships one."
        )
    return tokenizer
