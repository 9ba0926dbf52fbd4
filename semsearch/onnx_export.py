"""ONNX copies of a model for ONNX Runtime: export, int8 quantisation and a cache.

The transformer is exported from the model's own weights with torch.onnx on first
use. The graph takes ``input_ids`` and ``attention_mask`` with dynamic batch and
sequence axes and returns ``last_hidden_state``, so pooling and normalisation stay
in semsearch. Files live under the user cache directory, named by a key over the
weights' sha256, the model config and the export settings, and each is written to
a temporary file first and then renamed, so a reader never sees a partial file.
Loading a cached file needs neither torch nor onnx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from semsearch.errors import BackendError
from semsearch.models import ModelSpec, cache_dir

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

OnnxPrecision = Literal["fp32", "int8"]

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"
# Everything that shapes the exported graph. Change "version" when the export
# code changes, so that caches written by older code are not reused.
EXPORT_SETTINGS: dict[str, object] = {
    "version": 2,
    "exporter": "torchscript",
    "opset": 17,
    "attention": "eager",
    "inputs": list(INPUT_NAMES),
    "output": OUTPUT_NAME,
    "fusion": "onnxruntime.transformers bert",
}
# Model types whose layers match the BERT patterns that ONNX Runtime's
# transformer optimiser fuses (attention, embedding and skip layer norms, GELU).
FUSABLE_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra"}
)
# Largest difference in the last hidden state that a fused graph may show
# against the plain export on a probe batch before it is discarded.
FUSION_TOLERANCE = 1e-3
# Per-channel int8 weights on the MatMuls with constant weights and on the fused
# attention's projections. On SciFact passages the default (per-tensor, with
# embeddings and attention products) fell to a cosine of 0.90 against fp32.
# The feed-forward down-projections (weights wider in than out) stay fp32,
# because their inputs, the GELU outputs, have the widest range. Quantising
# them too cost SciFact nDCG@10 0.0056 against fp32 and lowered the mean cosine
# on 256 passages from 0.9979 to 0.9951.
QUANTIZATION_SETTINGS: dict[str, object] = {
    "method": "onnxruntime.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": True,
    "op_types": ["MatMul", "Attention"],
    "constant_weights_only": True,
    "excluded": "MatMul with a constant weight of more rows than columns",
}
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def onnx_cache_dir() -> Path:
    return cache_dir() / "onnx"


def onnx_model_path(spec: ModelSpec, precision: OnnxPrecision) -> Path:
    """Return the cache path of ``spec``'s ONNX file at ``precision``."""
    settings: dict[str, object] = {
        "weights_sha256": spec.weights_sha256,
        "config_sha256": _file_sha256(spec.path / "config.json"),
        "export": EXPORT_SETTINGS,
    }
    if precision == "int8":
        settings["quantization"] = QUANTIZATION_SETTINGS
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    slug = _UNSAFE_NAME_CHARS.sub("-", spec.name.rstrip("/").split("/")[-1])
    return onnx_cache_dir() / f"{slug}-{key[:20]}-{precision}.onnx"


def ensure_onnx_model(spec: ModelSpec, precision: OnnxPrecision) -> Path:
    """Return the path of the cached ONNX file, exporting it on first use.

    The int8 file is quantised from the fp32 one, which is exported first if it
    is missing too. Raises BackendError when export or quantisation fails.
    """
    path = onnx_model_path(spec, precision)
    if path.is_file():
        logger.debug("Using cached ONNX model %s", path)
        return path

    fp32_path = onnx_model_path(spec, "fp32")
    if not fp32_path.is_file():
        export_onnx(spec, fp32_path)
    if precision == "int8":
        quantize_int8(fp32_path, path)
    return path


def export_onnx(spec: ModelSpec, destination: Path) -> None:
    """Export the transformer of ``spec`` to ``destination`` as fp32 ONNX."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise BackendError(
            f"Exporting model {spec.name!r} to ONNX needs torch and transformers, "
            f"which cannot be imported ({exc}). Install them, or use --backend torch."
        ) from exc

    logger.info("Exporting model %s to ONNX at %s", spec.name, destination)
    model = AutoModel.from_pretrained(
        spec.path,
        local_files_only=True,
        dtype=torch.float32,
        attn_implementation=str(EXPORT_SETTINGS["attention"]),
    )
    module = _wrap_last_hidden_state(model).eval()
    input_ids, attention_mask = _example_inputs(int(model.config.vocab_size))
    axes = {0: "batch", 1: "sequence"}
    dynamic_axes = {name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)}

    def write(temporary: Path) -> None:
        # The tracer warns about Python branches on tensor values inside
        # transformers' mask code. The example batch has a padded row, so the
        # traced branch is the masked one, which is right for every input.
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (input_ids, attention_mask),
                str(temporary),
                dynamo=False,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=int(str(EXPORT_SETTINGS["opset"])),
                do_constant_folding=True,
            )
        config = model.config
        if config.model_type in FUSABLE_MODEL_TYPES:
            fuse_transformer(
                temporary,
                heads=int(config.num_attention_heads),
                hidden=int(config.hidden_size),
                vocab_size=int(config.vocab_size),
            )

    _write_atomically(destination, write, what=f"ONNX export of {spec.name!r}")


def fuse_transformer(path: Path, *, heads: int, hidden: int, vocab_size: int) -> bool:
    """Replace the graph at ``path`` by ONNX Runtime's fused BERT graph.

    Fused attention, embedding and skip layer norms and GELU run about 5 % faster
    on CPU and let int8 quantise the attention projections too. The fused graph
    is kept only if its output on a padded probe batch matches the plain graph
    within ``FUSION_TOLERANCE``. Otherwise the plain graph stays and a warning
    is logged. Returns whether the fused graph was kept.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    with _temporary_sibling(path) as fused:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(
                str(path),
                model_type="bert",
                num_heads=heads,
                hidden_size=hidden,
                opt_level=0,
            )
            optimized.save_model_to_file(str(fused))
        difference = _largest_difference(path, fused, vocab_size)
        if difference > FUSION_TOLERANCE:
            logger.warning(
                "Not fusing the ONNX graph: its output differs by %.2g from the "
                "plain export (tolerance %.0g)",
                difference,
                FUSION_TOLERANCE,
            )
            return False
        os.replace(fused, path)
    return True


def _largest_difference(first: Path, second: Path, vocab_size: int) -> float:
    """Run both graphs on one padded probe batch; return the largest difference."""
    import numpy as np
    import onnxruntime

    generator = np.random.default_rng(0)
    input_ids = generator.integers(1000, vocab_size, size=(3, 37), dtype=np.int64)
    attention_mask = np.ones_like(input_ids)
    attention_mask[1, 20:] = 0
    attention_mask[2, 5:] = 0
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    outputs = []
    for path in (first, second):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        (hidden,) = session.run([OUTPUT_NAME], feeds)
        outputs.append(hidden)
    kept = attention_mask.astype(bool)
    return float(np.abs(outputs[0][kept] - outputs[1][kept]).max())


def quantize_int8(source: Path, destination: Path) -> None:
    """Write a dynamically int8-quantised copy of the ONNX file ``source``."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise BackendError(
            f"int8 quantisation needs onnxruntime and onnx ({exc}). Install them "
            "with: pip install 'semsearch[onnx]'"
        ) from exc

    logger.info("Quantising %s to int8 at %s", source, destination)
    excluded = _down_projections(source)

    def write(temporary: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                source,
                temporary,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                nodes_to_exclude=excluded,
                # Fused operators live in ONNX Runtime's own domain, where
                # shape inference cannot type their outputs; they are float.
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
            )

    _write_atomically(destination, write, what=f"int8 quantisation of {source.name}")


def _down_projections(path: Path) -> list[str]:
    """Return the MatMul nodes whose constant weight has more rows than columns.

    Such a weight maps a wider input to a narrower output, as the second matrix
    of a feed-forward block does.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {weight.name: tuple(weight.dims) for weight in graph.initializer}
    names = []
    for node in graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "MatMul" else None
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            names.append(node.name)
    return names


def _write_atomically(
    destination: Path, write: Callable[[Path], None], *, what: str
) -> None:
    """Run ``write`` on a temporary file next to ``destination``, then rename it."""
    with _temporary_sibling(destination) as temporary:
        try:
            write(temporary)
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(
                f"{what} to {str(destination)!r} failed: {exc}. Use --backend torch "
                "to encode without ONNX."
            ) from exc
        os.replace(temporary, destination)


@contextmanager
def _temporary_sibling(destination: Path) -> Iterator[Path]:
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the final os.replace is an atomic rename. The name keeps
    # the .onnx suffix, which the quantiser's own temporary files rely on.
    temporary = destination.with_name(
        f".{destination.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.onnx"
    )
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _example_inputs(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a 2 x 8 batch whose second row is padded, as int64 tensors."""
    import torch

    input_ids = torch.arange(8, dtype=torch.long).repeat(2, 1) % vocab_size
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wrap_last_hidden_state(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap ``model`` so that it takes two inputs and returns its last hidden state.

    The class is defined on first use because it subclasses torch.nn.Module, and
    this module must import without torch.
    """
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> torch.Tensor:
            output = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return output.last_hidden_state

    return LastHiddenState(model)
