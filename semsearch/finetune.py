"""Contrastive fine-tuning of the encoder on pairs from the user's own corpus.

The model is trained as semsearch runs it: a transformers ``AutoModel``, the
model's pooling and L2 normalisation, with anchors encoded as queries and
positives and negatives as passages. Two losses are available:

- ``mnr`` (multiple negatives ranking): cross-entropy over the scaled cosine
  similarities of each anchor with every positive in the batch, plus any explicit
  negatives as extra columns. The anchor's own positive is the correct class.
- ``triplet``: ``max(0, cos(a, n) - cos(a, p) + margin)`` with one negative per
  pair, usually a hard negative mined from the collection.

The result is a normal model directory that semsearch and sentence-transformers
both load.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .encoder import l2_normalize, pool, resolve_device, resolve_precision
from .errors import ConfigError
from .models import ModelSpec, resolve_model
from .pairs import TrainingPair, sample_batches, split_held_out

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Loss = Literal["mnr", "triplet"]
LOSSES = ("mnr", "triplet")
TRAINING_RECORD = "semsearch_finetune.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings.

    ``scale`` multiplies cosine similarities before the softmax of the ``mnr``
    loss (an inverse temperature). ``max_length`` caps training inputs in tokens,
    special tokens included. The saved model keeps the base model's own limit.
    ``held_out`` is the fraction of pairs (by group) kept out of training to
    measure retrieval after each epoch. Training stops when that measure (MRR)
    has not improved for ``patience`` epochs, and the best epoch's weights are
    saved. ``mini_batch_size`` makes each batch embed that many pairs at a time
    with cached gradients (see ``ContrastiveTrainer.backward_cached``), so a large
    batch, and with it many in-batch negatives, fits in memory.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    loss: Loss = "mnr"
    scale: float = 20.0
    margin: float = 0.3
    max_length: int = 128
    accumulation_steps: int = 1
    mini_batch_size: int | None = None
    held_out: float = 0.1
    patience: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"invalid {name} {value!r}: use a positive integer")
        piece_size = self.mini_batch_size
        if piece_size is not None:
            if not isinstance(piece_size, int) or piece_size < 1:
                raise ConfigError(
                    f"invalid mini_batch_size {piece_size!r}: use a positive "
                    "integer, or None to embed each batch at once"
                )
            if piece_size >= self.batch_size:
                raise ConfigError(
                    f"mini_batch_size {piece_size} is not smaller than batch_size "
                    f"{self.batch_size}, so it would change nothing; pass a smaller "
                    "value, or none"
                )
        if self.loss not in LOSSES:
            raise ConfigError(f"invalid loss {self.loss!r}: use one of {LOSSES}")
        if not self.learning_rate > 0:
            raise ConfigError(
                f"invalid learning rate {self.learning_rate!r}: use a positive number"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"invalid warmup ratio {self.warmup_ratio!r}: use 0 to below 1"
            )
        if self.patience < 1:
            raise ConfigError(f"invalid patience {self.patience!r}: use 1 or more")


@dataclass(frozen=True)
class EpochResult:
    """Mean training loss of an epoch and retrieval on the held-out pairs after it.

    Epoch 0 is the base model before training, with no loss. Recall@1 and MRR
    rank each held-out anchor's positive among all held-out positives.
    """

    epoch: int
    loss: float | None
    recall_at_1: float | None
    mrr: float | None
    steps: int
    seconds: float


@dataclass(frozen=True)
class TrainingEvent:
    """A progress snapshot after each optimiser step and at each epoch's end."""

    epoch: int
    step: int
    total_steps: int
    loss: float
    finished_epoch: EpochResult | None = None


@dataclass
class FinetuneResult:
    """The output, weights hash and per-epoch metrics of a fine-tuning run."""

    output_dir: str
    base_model: str
    weights_sha256: str
    train_pairs: int
    held_out_pairs: int
    best_epoch: int
    # Training pairs that carry an explicit (usually mined) negative.
    train_negatives: int = 0
    epochs: list[EpochResult] = field(default_factory=list)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir,
            "base_model": self.base_model,
            "weights_sha256": self.weights_sha256,
            "train_pairs": self.train_pairs,
            "held_out_pairs": self.held_out_pairs,
            "train_negatives": self.train_negatives,
            "best_epoch": self.best_epoch,
            "epochs": [asdict(epoch) for epoch in self.epochs],
            "seconds": round(self.seconds, 1),
            "config": self.config,
        }


class ContrastiveTrainer:
    """A sentence encoder loaded for training, with its loss and evaluation."""

    def __init__(
        self, model: str | os.PathLike[str] | ModelSpec | None, config: FinetuneConfig
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        config.validate()
        self.config = config
        self.spec = model if isinstance(model, ModelSpec) else resolve_model(model)
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)  # type: ignore[arg-type]
        self.max_length = min(config.max_length, self.spec.max_seq_length)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            self.spec.path, local_files_only=True
        )
        self.model: PreTrainedModel = AutoModel.from_pretrained(
            self.spec.path, local_files_only=True
        ).to(self.device)

    def embed(self, texts: Sequence[str], *, kind: str) -> torch.Tensor:
        """Embed texts with gradients as unit vectors ``[len(texts), dim]``."""
        prefix = self.spec.query_prefix if kind == "query" else self.spec.passage_prefix
        inputs = self.tokenizer(
            [prefix + text for text in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with self._autocast():
            hidden = self.model(**inputs).last_hidden_state
        pooled = pool(hidden.float(), inputs["attention_mask"], self.spec.pooling)
        return l2_normalize(pooled)

    def loss(self, pairs: Sequence[TrainingPair]) -> torch.Tensor:
        """Compute the configured loss of one batch."""
        vectors = [self.embed(texts, kind=kind) for texts, kind in self._inputs(pairs)]
        return self.loss_of(*vectors)

    def _inputs(self, pairs: Sequence[TrainingPair]) -> list[tuple[list[str], str]]:
        """Return the batch's texts to embed: anchors, positives, then any negatives."""
        negatives = [pair.negative for pair in pairs if pair.negative is not None]
        if self.config.loss == "triplet" and len(negatives) != len(pairs):
            raise ConfigError(
                "the triplet loss needs a negative for every pair; mine hard "
                "negatives from a collection or use --loss mnr"
            )
        inputs = [
            ([pair.anchor for pair in pairs], "query"),
            ([pair.positive for pair in pairs], "passage"),
        ]
        if negatives:
            inputs.append((negatives, "passage"))
        return inputs

    def loss_of(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the configured loss from a batch's unit vectors."""
        import torch
        from torch.nn import functional

        if self.config.loss == "triplet":
            positive_scores = (anchors * positives).sum(dim=1)
            negative_scores = (anchors * negatives).sum(dim=1)
            margins = negative_scores - positive_scores + self.config.margin
            return functional.relu(margins).mean()

        # Scores [batch, batch + negatives]: column i is the positive of anchor i,
        # every other column is a negative for it.
        candidates = positives if negatives is None else torch.cat([positives, negatives])
        scores = self.config.scale * anchors @ candidates.T
        labels = torch.arange(len(anchors), device=scores.device)
        return functional.cross_entropy(scores, labels)

    def backward_cached(
        self,
        pairs: Sequence[TrainingPair],
        piece_size: int,
        scale: Callable[[torch.Tensor], torch.Tensor],
    ) -> float:
        """Backpropagate one batch's loss while embedding ``piece_size`` texts at a time.

        Gradient caching (Gao et al., 2021, arXiv:2101.06983). First every text
        is embedded without gradients, and the loss over the whole batch gives
        the gradient of each vector. Then each piece is embedded again, this
        time with gradients, and backpropagated with its vectors' cached
        gradients. The parameters get
        the gradients of the whole batch at once, for about one more forward
        pass, and memory keeps the activations of one piece only. Dropout gives
        each piece the same mask in both passes because the random state is
        replayed. ``scale`` maps the loss to what is backpropagated (the
        gradient scaler and the accumulation divisor). Returns the loss as
        computed, before ``scale``.
        """
        import torch

        inputs = self._inputs(pairs)
        pieces: list[list[tuple[list[str], str, Any]]] = []
        cached: list[torch.Tensor] = []
        with torch.no_grad():
            for texts, kind in inputs:
                parts, vectors = [], []
                for start in range(0, len(texts), piece_size):
                    piece = texts[start : start + piece_size]
                    state = self._random_state()
                    vectors.append(self.embed(piece, kind=kind))
                    parts.append((piece, kind, state))
                pieces.append(parts)
                cached.append(torch.cat(vectors).requires_grad_())
        loss = self.loss_of(*cached)
        scale(loss).backward()
        for parts, vectors in zip(pieces, cached):
            offset = 0
            for piece, kind, state in parts:
                self._set_random_state(state)
                gradient = vectors.grad[offset : offset + len(piece)]
                self.embed(piece, kind=kind).backward(gradient=gradient)
                offset += len(piece)
        return float(loss.detach())

    def _random_state(self) -> list[torch.Tensor]:
        import torch

        state = [torch.get_rng_state()]
        if self.device.startswith("cuda"):
            state.append(torch.cuda.get_rng_state(self.device))
        return state

    def _set_random_state(self, state: list[torch.Tensor]) -> None:
        import torch

        torch.set_rng_state(state[0])
        if len(state) > 1:
            torch.cuda.set_rng_state(state[1], self.device)

    def evaluate(
        self, pairs: Sequence[TrainingPair], batch_size: int = 64
    ) -> tuple[float, float]:
        """Return (recall@1, MRR) of anchors retrieving their positives.

        Each held-out anchor ranks all held-out positives. A positive text that
        several pairs share counts for each of them.
        """
        import torch

        if not pairs:
            return math.nan, math.nan
        self.model.eval()
        with torch.inference_mode():
            anchors = self._embed_all([p.anchor for p in pairs], "query", batch_size)
            positives = self._embed_all(
                [p.positive for p in pairs], "passage", batch_size
            )
        self.model.train()
        scores = anchors @ positives.T
        correct = scores.diagonal().unsqueeze(1)
        # Rank = number of other positives scoring strictly higher.
        ranks = (scores > correct).sum(dim=1).float()
        recall_at_1 = float((ranks == 0).float().mean())
        mrr = float((1.0 / (ranks + 1.0)).mean())
        return recall_at_1, mrr

    def _embed_all(self, texts: list[str], kind: str, batch_size: int) -> torch.Tensor:
        import torch

        parts = [
            self.embed(texts[start : start + batch_size], kind=kind)
            for start in range(0, len(texts), batch_size)
        ]
        return torch.cat(parts)

    def _autocast(self) -> Any:
        from contextlib import nullcontext

        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)


def finetune(
    pairs: Sequence[TrainingPair],
    output_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | ModelSpec | None = None,
    config: FinetuneConfig | None = None,
    held_out: Sequence[TrainingPair] | None = None,
    on_event: Callable[[TrainingEvent], None] | None = None,
    trainer: ContrastiveTrainer | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``pairs`` and save the best epoch to ``output_dir``.

    Without ``held_out``, ``config.held_out`` of the pairs is split off by group.
    A ``trainer`` passed in replaces ``model`` and ``config``, and keeps the best
    weights in memory afterwards. Raises ConfigError when fewer than 2 pairs are
    left to train on.
    """
    import torch

    if trainer is not None:
        config = trainer.config
    config = config or FinetuneConfig()
    config.validate()
    if held_out is None:
        train, held_out = split_held_out(pairs, config.held_out, config.seed)
    else:
        train = list(pairs)
    if len(train) < 2:
        raise ConfigError(
            f"{len(train)} training pairs left after the held-out split; "
            "contrastive training needs at least 2"
        )

    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    trainer = trainer or ContrastiveTrainer(model, config)
    trainer.model.train()
    logger.info(
        "Fine-tuning %s on %d pairs (%d held out), %s loss, %s on %s",
        trainer.spec.name,
        len(train),
        len(held_out),
        config.loss,
        trainer.precision,
        trainer.device,
    )

    loop = _TrainingLoop(trainer, train, held_out, on_event)
    epochs, best_epoch = loop.run()
    trainer.model.load_state_dict(loop.best_state)
    save_model(trainer.model, trainer.tokenizer, trainer.spec, output_dir)

    result = FinetuneResult(
        output_dir=str(output_dir),
        base_model=trainer.spec.name,
        weights_sha256=resolve_model(output_dir).weights_sha256,
        train_pairs=len(train),
        held_out_pairs=len(held_out),
        best_epoch=best_epoch,
        train_negatives=sum(pair.negative is not None for pair in train),
        epochs=epochs,
        seconds=time.perf_counter() - started,
        config=asdict(config),
    )
    record = Path(output_dir) / TRAINING_RECORD
    record.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


class _TrainingLoop:
    """Epochs of optimiser steps with evaluation, early stopping and the best state."""

    def __init__(
        self,
        trainer: ContrastiveTrainer,
        train: Sequence[TrainingPair],
        held_out: Sequence[TrainingPair],
        on_event: Callable[[TrainingEvent], None] | None,
    ) -> None:
        self.trainer = trainer
        self.config = trainer.config
        self.train = list(train)
        self.held_out = list(held_out)
        self.on_event = on_event
        self.best_state = _copy_state(trainer.model)

    def run(self) -> tuple[list[EpochResult], int]:
        import torch

        config = self.config
        model = self.trainer.model
        first_batches = self._batches(0)
        steps_per_epoch = math.ceil(len(first_batches) / config.accumulation_steps)
        total_steps = steps_per_epoch * config.epochs
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        scheduler = _linear_warmup(
            optimizer, round(total_steps * config.warmup_ratio), total_steps
        )
        scaler = torch.amp.GradScaler(enabled=self.trainer.precision == "fp16")

        recall, mrr = self.trainer.evaluate(self.held_out)
        epochs = [EpochResult(0, None, _or_none(recall), _or_none(mrr), 0, 0.0)]
        self._emit(0, 0, total_steps, 0.0, epochs[0])
        best_epoch, best_mrr, stale = 0, -math.inf, 0
        step = 0
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            batches = first_batches if epoch == 1 else self._batches(epoch - 1)
            losses = []
            for group_start in range(0, len(batches), config.accumulation_steps):
                group = batches[group_start : group_start + config.accumulation_steps]
                losses.append(self._step(group, optimizer, scaler))
                scheduler.step()
                step += 1
                self._emit(epoch, step, total_steps, losses[-1])

            recall, mrr = self.trainer.evaluate(self.held_out)
            result = EpochResult(
                epoch=epoch,
                loss=sum(losses) / max(len(losses), 1),
                recall_at_1=_or_none(recall),
                mrr=_or_none(mrr),
                steps=len(losses),
                seconds=time.perf_counter() - started,
            )
            epochs.append(result)
            self._emit(epoch, step, total_steps, result.loss or 0.0, result)
            logger.info("Epoch %d: %s", epoch, result)

            # Without held-out pairs the last epoch is the best one.
            score = mrr if not math.isnan(mrr) else float(epoch)
            if score > best_mrr:
                best_epoch, best_mrr, stale = epoch, score, 0
                self.best_state = _copy_state(model)
            else:
                stale += 1
                if stale >= config.patience:
                    logger.info("Stopping early: no better held-out MRR")
                    break
        return epochs, best_epoch

    def _batches(self, epoch: int) -> list[list[TrainingPair]]:
        indices = sample_batches(
            self.train, self.config.batch_size, self.config.seed + epoch
        )
        # A batch of one pair has no in-batch negatives, so its loss is zero.
        minimum = 1 if self.config.loss == "triplet" else 2
        return [
            [self.train[i] for i in batch] for batch in indices if len(batch) >= minimum
        ]

    def _step(
        self, group: list[list[TrainingPair]], optimizer: Any, scaler: Any
    ) -> float:
        """Accumulate gradients over ``group`` and take one optimiser step.

        Each batch computes its own loss, so in-batch negatives stay within a batch.
        """
        import torch

        total = 0.0
        piece_size = self.config.mini_batch_size
        for batch in group:
            if piece_size is not None and piece_size < len(batch):
                loss_value = self.trainer.backward_cached(
                    batch, piece_size, lambda loss: scaler.scale(loss / len(group))
                )
                total += loss_value / len(group)
                continue
            loss = self.trainer.loss(batch) / len(group)
            scaler.scale(loss).backward()
            total += float(loss.detach())
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainer.model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return total

    def _emit(
        self,
        epoch: int,
        step: int,
        total_steps: int,
        loss: float,
        finished: EpochResult | None = None,
    ) -> None:
        if self.on_event is not None:
            self.on_event(TrainingEvent(epoch, step, total_steps, loss, finished))


def _linear_warmup(optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    """Scale the learning rate from 0 up to its value over the warmup, then to 0."""
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        remaining = total_steps - step
        return max(0.0, remaining / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _copy_state(model: Any) -> dict[str, Any]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def match_weights_mode(directory: Path) -> None:
    """Give the weights files the permissions of the config file next to them.

    safetensors 0.8 creates its files with mode 0600, while the other files
    follow the umask.
    """
    mode = (directory / "config.json").stat().st_mode & 0o777
    for weights in directory.glob("*.safetensors"):
        weights.chmod(mode)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    output_dir: str | os.PathLike[str],
) -> Path:
    """Save a sentence-transformers model directory: weights, tokenizer, modules.

    The directory contains the transformers weights as safetensors, the tokenizer,
    and modules.json with Transformer, Pooling (the base model's mode) and
    Normalize modules, so semsearch and sentence-transformers load it alike.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    match_weights_mode(out)

    dim = int(model.config.hidden_size)
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "",
            "type": "sentence_transformers.models.Transformer",
        },
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    _write_json(out / "modules.json", modules)
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": spec.pooling == "cls",
            "pooling_mode_mean_tokens": spec.pooling == "mean",
            "pooling_mode_max_tokens": spec.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": spec.pooling == "lasttoken",
            "include_prompt": True,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": spec.max_seq_length, "do_lower_case": False},
    )
    prompts = {}
    if spec.query_prefix:
        prompts["query"] = spec.query_prefix
    if spec.passage_prefix:
        prompts["document"] = spec.passage_prefix
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    logger.info("Saved fine-tuned model to %s", out)
    return out


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
