"""`rlhf export RUN --what policy|reward|value --to DIR [--merged|--adapter] [--stage sft|ppo] [--push-to-hub REPO]`."""

from __future__ import annotations

import sys

from rlhf.config_methods import POLICY_METHODS
from rlhf.models.export import WHAT, ExportError, export_model
from rlhf.run import setup_logging


def add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a run's policy, reward model or value network as a folder plain transformers / peft can load",
        description=(
            "Export a finished run's model with a model card (README.md). policy: the PPO policy (the SFT one when "
            "PPO did not run, or with --stage sft) as a plain causal-LM folder (--merged, the default) or one peft "
            "adapter on the base model (--adapter). reward, value: an AutoModelForSequenceClassification folder "
            "(one score) for pipeline('text-classification', function_to_apply='none')."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--what", required=True, choices=WHAT, help="which model")
    p.add_argument("--to", required=True, metavar="DIR", help="the folder to write (replaced if it exists)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--merged", dest="merged", action="store_true", default=True, help="a full model (default)")
    form.add_argument("--adapter", dest="merged", action="store_false", help="policy only: a peft adapter folder")
    p.add_argument(
        "--stage",
        choices=("sft", *POLICY_METHODS),
        default=None,
        help="policy only: which policy (default: the first trained of ppo, rloo, grpo, dpo, else sft)",
    )
    p.add_argument(
        "--push-to-hub", default="", metavar="REPO", help="also upload the folder to this Hugging Face hub repo"
    )


def main_export(args) -> int:
    setup_logging(None)
    try:
        folder = export_model(args.run_dir, args.what, args.to, args.merged, args.stage, args.push_to_hub)
    except (ExportError, FileNotFoundError) as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.what} to {folder}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0
