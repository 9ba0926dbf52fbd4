"""Average a fine-tuned model's weights with its base model's (weight-space ensembling).

The output directory is a copy of the fine-tuned one whose weights are
``(1 - share) * base + share * tuned``, tensor by tensor. Both models must have
the same architecture. The result loads with ``--model DIR`` like any model
directory, with its own weights hash.

    python scripts/average_model_weights.py /tmp/ft/run-b /tmp/ft/mix --share 0.5
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from semsearch.errors import SemsearchError
from semsearch.finetune import TRAINING_RECORD, match_weights_mode
from semsearch.models import resolve_model

WEIGHTS = "model.safetensors"
# semsearch caches the weights hash next to them, and the average changes it.
HASH_CACHE = "weights-sha256.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuned", type=Path, help="fine-tuned model directory")
    parser.add_argument("out", type=Path, help="new directory for the averaged model")
    parser.add_argument(
        "--base", help="base model directory or name (default: the bundled model)"
    )
    parser.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="weight of the fine-tuned model, 0 to 1 (default 0.5)",
    )
    args = parser.parse_args()
    if not 0.0 <= args.share <= 1.0:
        parser.error(f"--share {args.share} is outside 0 to 1")
    if args.out.exists():
        parser.error(f"{args.out} exists; pass a new directory")

    try:
        base_dir = Path(resolve_model(args.base).path)
    except SemsearchError as exc:
        raise SystemExit(str(exc)) from None
    base = _load_weights(base_dir)
    tuned = _load_weights(args.tuned)
    _check_same_architecture(base, tuned, base_dir, args.tuned)
    averaged = {}
    for name, value in tuned.items():
        if value.is_floating_point():
            mixed = (1 - args.share) * base[name].float() + args.share * value.float()
            averaged[name] = mixed.to(value.dtype)
        else:
            averaged[name] = value

    shutil.copytree(
        args.tuned, args.out, ignore=shutil.ignore_patterns(WEIGHTS, HASH_CACHE)
    )
    save_file(averaged, args.out / WEIGHTS, metadata={"format": "pt"})
    if (args.out / "config.json").is_file():
        match_weights_mode(args.out)
    record_path = args.out / TRAINING_RECORD
    if record_path.is_file():
        # The record names the fine-tuned weights, so it gets the average's hash.
        record = json.loads(record_path.read_text(encoding="utf-8"))
        record["weights_sha256"] = resolve_model(args.out).weights_sha256
        record["averaged_with_base"] = {"base": str(args.base or "bundled"),
                                        "share": args.share}  # fmt: skip
        record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(averaged)} tensors, share {args.share}")


def _load_weights(directory: Path) -> dict:
    path = directory / WEIGHTS
    if not path.is_file():
        raise SystemExit(
            f"{directory} has no {WEIGHTS}; pass a model directory with safetensors "
            "weights, such as the output of semsearch finetune"
        )
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types
        raise SystemExit(
            f"failed to read {path}: {exc}; pass a model directory whose weights "
            "load with safetensors"
        ) from None


def _check_same_architecture(
    base: dict, tuned: dict, base_dir: Path, tuned_dir: Path
) -> None:
    # Buffers such as position ids may be saved by one model and not the other.
    only_base = sorted(
        name for name in base.keys() - tuned.keys() if "position_ids" not in name
    )
    only_tuned = sorted(tuned.keys() - base.keys())
    if only_base or only_tuned:
        extra = (only_tuned or only_base)[0]
        raise SystemExit(
            f"the models differ in architecture: {extra!r} is in only one of "
            f"{tuned_dir} and {base_dir} ({len(only_base) + len(only_tuned)} "
            "tensors differ); pass the base model the fine-tuned one came from"
        )
    for name, value in tuned.items():
        if base[name].shape != value.shape:
            raise SystemExit(
                f"the models differ in architecture: {name!r} has shape "
                f"{tuple(value.shape)} in {tuned_dir} and {tuple(base[name].shape)} "
                f"in {base_dir}; pass the base model the fine-tuned one came from"
            )


if __name__ == "__main__":
    main()
