"""The encoder: turn queries and passages into L2-normalised embeddings.

It runs a Hugging Face transformers model directly and pools its token states
itself, so the result matches the model's sentence-transformers configuration
without loading sentence-transformers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from semsearch.errors import ConfigError, ModelNotFoundError
from semsearch.models import ModelSpec, Pooling, fingerprint, resolve_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Device = str  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
Precision = Literal["auto", "fp32", "fp16", "bf16"]
Kind = Literal["query", "passage"]

VALID_DEVICES = '"auto", "cpu", "cuda", "cuda:N" (N a GPU index) or "mps"'
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
NORM_EPS = 1e-12


class Encoder:
    """A sentence embedding model loaded for inference.

    Rows of every returned array are float32 and have unit L2 norm, whatever the
    model's own ``normalize`` setting, so dot products are cosine similarities.
    Texts are sorted by token length and packed into batches of at most
    ``batch_tokens`` padded tokens and ``max_batch_size`` rows. A text longer than
    ``batch_tokens`` still runs, alone in its batch.

    Precision "auto" means fp32 on CPU and MPS, and fp16 autocast on CUDA, where
    fp16 runs on every GPU with tensor cores. fp16 and bf16 run under
    ``torch.autocast`` with fp32 weights, so layer norms and softmax stay in fp32.
    bf16 is allowed on CPU, and fp16 is rejected there.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelSpec | None = None,
        *,
        device: Device = "auto",
        precision: Precision = "auto",
        batch_tokens: int = 16384,
        max_batch_size: int = 256,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        _check_positive("batch_tokens", batch_tokens)
        _check_positive("max_batch_size", max_batch_size)
        self.device: str = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size

        self.spec = _resolve_spec(model, query_prefix, passage_prefix)
        self.max_seq_length = self.spec.max_seq_length
        self.tokenizer: PreTrainedTokenizerBase = _load_tokenizer(self.spec)
        self.model: PreTrainedModel = _load_model(self.spec, self.device)
        self.dim: int = int(self.model.config.hidden_size)
        # Some decoder tokenizers define no pad token. Padded positions are masked
        # out, so any valid id works there.
        pad_id = self.tokenizer.pad_token_id
        self._pad_token_id: int = 0 if pad_id is None else int(pad_id)
        self.fingerprint: dict[str, object] = fingerprint(self.spec, self.dim)

        # Content tokens that a passage can have before the model truncates it.
        prefix_tokens = self.count_tokens(self.spec.passage_prefix)
        special_tokens = self.tokenizer.num_special_tokens_to_add(pair=False)
        self.max_passage_tokens = self.max_seq_length - special_tokens - prefix_tokens

        logger.info(
            "Loaded model %s from %s on %s (%s)",
            self.spec.name,
            self.spec.path,
            self.device,
            self.precision,
        )

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
        if isinstance(texts, str):
            raise TypeError(
                "encode() expects a sequence of strings but got a single str. "
                "Wrap it in a list."
            )
        if kind not in ("query", "passage"):
            raise ConfigError(f"Invalid kind {kind!r}. Use 'query' or 'passage'.")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)

        prefix = self.spec.query_prefix if kind == "query" else self.spec.passage_prefix
        rows = self._tokenize([prefix + text for text in texts])

        embeddings = np.empty((len(rows), self.dim), dtype=np.float32)
        lengths = [len(row["input_ids"]) for row in rows]
        for batch in plan_batches(lengths, self.batch_tokens, self.max_batch_size):
            embeddings[batch] = self._embed_batch([rows[i] for i in batch])
        return embeddings

    def count_tokens(self, text: str) -> int:
        """Count the tokens of ``text`` without special tokens or prefix."""
        encoded = self.tokenizer(
            text, add_special_tokens=False, truncation=False, verbose=False
        )
        return len(encoded["input_ids"])

    def _tokenize(self, texts: list[str]) -> list[dict[str, list[int]]]:
        """Tokenise with truncation at max_seq_length, warning once if it cut any."""
        limit = self.max_seq_length
        # One token over the limit shows which texts the real truncation cuts.
        probe = self.tokenizer(texts, truncation=True, max_length=limit + 1)
        rows = [{name: probe[name][i] for name in probe} for i in range(len(texts))]
        long_rows = [i for i, row in enumerate(rows) if len(row["input_ids"]) > limit]
        if not long_rows:
            return rows

        logger.warning(
            "Truncated %d of %d inputs to %d tokens. Split long texts into chunks "
            "before encoding",
            len(long_rows),
            len(texts),
            limit,
        )
        cut = self.tokenizer(
            [texts[i] for i in long_rows], truncation=True, max_length=limit
        )
        for position, i in enumerate(long_rows):
            rows[i] = {name: cut[name][position] for name in cut}
        return rows

    def _embed_batch(self, rows: list[dict[str, list[int]]]) -> np.ndarray:
        import torch

        padded = self._pad(rows)
        mask = padded["attention_mask"]
        names = self.tokenizer.model_input_names
        inputs = {key: value for key, value in padded.items() if key in names}

        with torch.inference_mode(), self._autocast():
            hidden = self.model(**inputs).last_hidden_state
        pooled = pool(hidden.float(), mask, self.spec.pooling)
        return l2_normalize(pooled).cpu().numpy()

    def _pad(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad rows to the longest on the tokenizer's padding side, as tensors."""
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        fill = {
            "input_ids": self._pad_token_id,
            "attention_mask": 0,
            "token_type_ids": self.tokenizer.pad_token_type_id,
        }
        left = self.tokenizer.padding_side == "left"
        columns: dict[str, list[list[int]]] = {name: [] for name in rows[0]}
        for row in rows:
            for name, values in row.items():
                padding = [fill.get(name, 0)] * (width - len(values))
                columns[name].append(padding + values if left else values + padding)
        return {
            name: torch.tensor(values, dtype=torch.long, device=self.device)
            for name, values in columns.items()
        }

    def _autocast(self) -> AbstractContextManager[Any]:
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)


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


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Pool token states ``[batch, seq, dim]`` into ``[batch, dim]`` over the mask.

    Padding may be on either side: "cls" takes the first attended position and
    "lasttoken" the last one.
    """
    import torch

    mask = mask.to(hidden.dtype)
    if mode == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        # The clamp guards rows whose mask is all zeros.
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return summed / counts
    if mode == "max":
        padding = mask.unsqueeze(-1) == 0
        return hidden.masked_fill(padding, float("-inf")).max(dim=1).values

    positions = torch.arange(mask.shape[1], device=mask.device)
    if mode == "cls":
        index = (mask * (mask.shape[1] - positions)).argmax(dim=1)
    elif mode == "lasttoken":
        index = (mask * (positions + 1)).argmax(dim=1)
    else:
        raise ConfigError(f"Invalid pooling {mode!r}. Use mean, cls, max or lasttoken.")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Scale rows to unit L2 norm. An all-zero row stays zero."""
    norms = vectors.norm(p=2, dim=1, keepdim=True).clamp(min=NORM_EPS)
    return vectors / norms


def resolve_device(device: Device) -> str:
    """Turn a device option into a concrete torch device string.

    "auto" picks CUDA, then MPS, then CPU. Raises ConfigError for an invalid
    string or a device that this machine does not have.
    """
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ConfigError(f"Invalid device {device!r}. Use {VALID_DEVICES}.")

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


def resolve_precision(precision: Precision, device: str) -> str:
    """Pick the compute precision for ``device``, as the Encoder docstring describes."""
    if precision not in _PRECISIONS:
        raise ConfigError(
            f"Invalid precision {precision!r}. Use one of {list(_PRECISIONS)!r}."
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


def _load_model(spec: ModelSpec, device: str) -> PreTrainedModel:
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(
            spec.path, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Cannot load model {spec.name!r} from {str(spec.path)!r}: {exc}. "
            "Check that the directory holds a transformers model."
        ) from exc
    return model.to(device).eval()
