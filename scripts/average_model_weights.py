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

from semsearch.finetune import TRAINING_RECORD
from semsearch.models import resolve_model

WEIGHTS = "model.safetensors"
# Written by semsearch next to the weights; stale for the averaged ones.
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

    base = load_file(Path(resolve_model(args.base).path) / WEIGHTS)
    tuned = load_file(args.tuned / WEIGHTS)
    averaged = {}
    for name, value in tuned.items():
        if name not in base or base[name].shape != value.shape:
            raise SystemExit(f"tensor {name!r} has no match in the base model")
        if value.is_floating_point():
            mixed = (1 - args.share) * base[name].float() + args.share * value.float()
            averaged[name] = mixed.to(value.dtype)
        else:
            averaged[name] = value

    shutil.copytree(
        args.tuned, args.out, ignore=shutil.ignore_patterns(WEIGHTS, HASH_CACHE)
    )
    save_file(averaged, args.out / WEIGHTS, metadata={"format": "pt"})
    record_path = args.out / TRAINING_RECORD
    if record_path.is_file():
        # The training record names the fine-tuned weights; note the average.
        record = json.loads(record_path.read_text(encoding="utf-8"))
        record["weights_sha256"] = resolve_model(args.out).weights_sha256
        record["averaged_with_base"] = {"base": str(args.base or "bundled"),
                                        "share": args.share}  # fmt: skip
        record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(averaged)} tensors, share {args.share}")


if __name__ == "__main__":
    main()
