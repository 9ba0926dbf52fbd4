"""Encoder backends: run the transformer on a padded batch and return unit vectors.

Each backend takes int64 ``input_ids`` and ``attention_mask`` arrays of shape
``[batch, seq]``. ``prepare`` turns them into what ``run`` consumes (device tensors
for torch, the arrays themselves for ONNX Runtime), so the encoder can prepare
the next batch on another thread while the current one runs.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from semsearch.errors import BackendError, ModelNotFoundError
from semsearch.models import ModelSpec
from semsearch.pooling import l2_normalize, l2_normalize_array, pool, pool_array

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx"]


class TorchBackend:
    """The model in torch on any device, under autocast for fp16 and bf16."""

    name: BackendName = "torch"

    def __init__(self, spec: ModelSpec, device: str, precision: str) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.model: PreTrainedModel = _load_model(spec, device)
        self.dim = int(self.model.config.hidden_size)
        # Page-locked host memory lets the host-to-device copy run asynchronously.
        self._pin = device.startswith("cuda")

    def prepare(
        self, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy a batch to the device. On CUDA the copy is queued, not awaited."""
        import torch

        # NOTE: the CUDA branch (pinned buffers, non_blocking copies issued from
        # the prefetch thread) has not run in the test suite, which has no GPU.
        # The copy goes on the device's current stream, the same stream as the
        # forward pass, so the forward pass waits for it.
        tensors = []
        for array in (input_ids, attention_mask):
            tensor = torch.from_numpy(array)
            if self._pin:
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            else:
                tensor = tensor.to(self.device)
            tensors.append(tensor)
        return tensors[0], tensors[1]

    def run(self, prepared: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        """Embed a prepared batch; returns float32 unit vectors on the host."""
        import torch

        input_ids, attention_mask = prepared
        # NOTE: token_type_ids are left out, so BERT-style models use their
        # default of all zeros, which is what a single sequence has.
        with torch.inference_mode(), self._autocast():
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        pooled = pool(hidden.float(), attention_mask, self.spec.pooling)
        return l2_normalize(pooled).cpu().numpy()

    def _autocast(self) -> AbstractContextManager[Any]:
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)


class OnnxBackend:
    """The exported model in ONNX Runtime on CPU, at fp32 or dynamic int8.

    Loading it imports onnxruntime and numpy only, unless the ONNX file still
    has to be exported, which needs torch once.
    """

    name: BackendName = "onnx"

    def __init__(self, spec: ModelSpec, precision: Literal["fp32", "int8"]) -> None:
        from semsearch.onnx_export import OUTPUT_NAME, ensure_onnx_model

        self.spec = spec
        self.precision = precision
        self.path = ensure_onnx_model(spec, precision)
        self.session = _open_session(self.path)
        self._output_names = [OUTPUT_NAME]

    def prepare(
        self, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return input_ids, attention_mask

    def run(self, prepared: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Embed a prepared batch; returns float32 unit vectors."""
        input_ids, attention_mask = prepared
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        (hidden,) = self.session.run(self._output_names, feeds)
        pooled = pool_array(hidden, attention_mask, self.spec.pooling)
        return l2_normalize_array(pooled)


def onnxruntime_installed() -> bool:
    """Tell whether onnxruntime can be imported, without importing it."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None


def _open_session(path: Any) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            "The ONNX backend needs onnxruntime, which is not installed. Install "
            "it with: pip install 'semsearch[onnx]', or use --backend torch."
        ) from exc

    options = onnxruntime.SessionOptions()
    # Errors only: ONNX Runtime otherwise logs graph-optimisation notices.
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own classes, not exported
        raise BackendError(
            f"ONNX Runtime cannot load {str(path)!r}: {exc}. Delete the file so "
            "that it is exported again, or use --backend torch."
        ) from exc


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
