"""Export a trained trial as a Hugging Face model folder (docs/export.md).

REF is a trial output dir, a checkpoint dir inside one, a sweep dir, a trial's MLflow run id or
a sweep's MLflow parent run id; for a sweep the report's leaderboard picks the trial (the best
one by the sweep's ranking metric). OUT must not exist or be an empty directory: export never
overwrites. Under LoRA the adapter and head are written in peft's format (``--merge``: a merged
full model instead). Methods whose prediction is not a plain forward (MVP, RSMI) also get what
``robustsweep.export.load_exported`` needs to predict like the trial.

Trust: only a directory with a robustsweep trial record is loaded, its checkpoint with
``torch.load(weights_only=True)``; a job with ``model.trust_remote_code`` needs
``--trust-remote-code``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "Write a trained trial (or a sweep's best trial) as a Hugging Face model folder"
ORDER = 65


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF",
                        help="Trial dir, checkpoint dir, sweep dir, MLflow run id or a sweep's "
                        "MLflow parent run id")
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="New (or empty) directory to write the model folder into")
    parser.add_argument("--merge", action="store_true",
                        help="LoRA trials: write the merged full model instead of the adapter")
    parser.add_argument("--search", type=Path, action="append", default=None, metavar="DIR",
                        help="Where to look for the trial or sweep of a run id (default: runs/)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for a parent run id found in no local sweep "
                        "(default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Allow a trial whose job sets model.trust_remote_code to run its "
                        "model's custom code")


def run(args: argparse.Namespace) -> int:
    from robustsweep.api import export

    result = export(args.ref, args.out, merge=args.merge, search=args.search,
                    tracking_uri=args.tracking_uri, trust_remote_code=args.trust_remote_code)
    if result.chosen_by:
        print(f"chose {result.chosen_by}")
    print(f"trial {result.trial_dir} (checkpoint {result.checkpoint})")
    if not result.finished:
        print("note: the trial has not finished; exported its newest complete checkpoint")
    print(f"wrote {result.out_dir} ({result.method}, {result.weights} weights): "
          + ", ".join(p.name for p in result.files))
    if result.plain_forward:
        print("predict: AutoModelForSequenceClassification.from_pretrained(OUT)"
              if result.weights != "lora_adapter"
              else "predict: PeftModel.from_pretrained(base, OUT) (docs/export.md)")
    else:
        print(f"predict: robustsweep.export.load_exported(OUT).predict_logits ({result.method}'s "
              "inference is not a plain forward; docs/export.md)")
    return 0
