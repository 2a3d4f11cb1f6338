"""`rlhf label ...`: serve the app, manage accounts, push a run's samples, add gold/qualification queries,
pull the answers, and run simulated labelers against a running app."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path

from sqlalchemy import func, select

from rlhf.data.io import read_jsonl
from rlhf.data.records import Sample
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user, end_all_sessions, find_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.exchange import pull_answers, push_gold, push_samples
from rlhf.labeling_app.ratelimit import clear_account, clear_address
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.simulated_client import AppLabelerClient, label_through_app
from rlhf.labeling_app.tables import QUERY_KINDS, ROLES, Query
from rlhf.run import RunDir
from rlhf.tasks import get_task


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=os.environ.get("RLHF_LABEL_DB", ""),
        help="database URL (default $RLHF_LABEL_DB, else sqlite file $RLHF_LABEL_DATA/label.db, default ./data)",
    )


def _read_password(env_var: str) -> str:
    if env_var:
        if env_var not in os.environ:
            raise ValueError(f"--password-env {env_var}: that environment variable is not set")
        return os.environ[env_var]
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\n")


def add_label_parser(sub) -> None:
    label = sub.add_parser(
        "label",
        help="the human-feedback labeling app: serve, push, pull, accounts",
        description="A web app where people (or simulated labelers) answer comparison queries.",
    )
    commands = label.add_subparsers(dest="label_command", required=True, metavar="ACTION")

    p = commands.add_parser(
        "serve", help="start the web app", description="Serve the labeling app (creates/upgrades the database first)."
    )
    _db_option(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gold-threshold", type=float, default=0.7, help="gold accuracy under which a labeler is paused")
    p.add_argument(
        "--login-max-failures-per-user",
        type=int,
        default=5,
        help="failed logins per account within the window before HTTP 429",
    )
    p.add_argument(
        "--login-max-failures-per-address",
        type=int,
        default=30,
        help="failed logins per client address within the window before HTTP 429",
    )
    p.add_argument("--login-window-seconds", type=float, default=900.0, help="sliding window of the login limits")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=LabelSettings.max_body_bytes,
        help="largest request body accepted; a larger one gets HTTP 413 before it is read (default 1 MiB)",
    )
    p.add_argument(
        "--trust-proxy-headers",
        action="store_true",
        help="take the client address from X-Forwarded-For (only behind your own reverse proxy; off, a client cannot fake its address)",
    )
    p.add_argument(
        "--cookie-secure",
        action="store_true",
        help="serving over HTTPS (directly or behind a TLS proxy): send the session cookie only over HTTPS, and HSTS",
    )

    p = commands.add_parser("add-user", help="create an account (password read from stdin, or --password-env)")
    _db_option(p)
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--password-env", default="", help="read the password from this environment variable")
    p.add_argument(
        "--simulated", default="", help="mark as a simulated labeler, e.g. 'sentiment T=0.5' (shown to admins)"
    )

    p = commands.add_parser(
        "unlock",
        help="clear an account's recent login attempts (a locked-out admin's way back in)",
        description="Anyone can lock an account for the login window by guessing its password; this lets it log in "
        "again at once. With --address, also clear a client address's attempts.",
    )
    _db_option(p)
    p.add_argument("name")
    p.add_argument("--address", default="", help="also clear the attempts from this client address")

    p = commands.add_parser(
        "end-sessions", help="log a user out everywhere (every browser's session of theirs ends at once)"
    )
    _db_option(p)
    p.add_argument("name")

    p = commands.add_parser("push", help="turn RUN_DIR/collect/samples.jsonl into a batch of queries")
    _db_option(p)
    p.add_argument("run_dir")
    p.add_argument("--kind", choices=QUERY_KINDS, default="", help="query type (default: the run's collect.kind)")
    p.add_argument("--name", default="", help="batch name (default RUN-KIND-COUNT)")
    p.add_argument("--overlap-share", type=float, default=0.05, help="share of queries answered by several labelers")
    p.add_argument("--overlap-labelers", type=int, default=5, help="distinct labelers per overlap query")
    p.add_argument(
        "--instructions", default="", help="instructions text (version 1; later versions from the admin page)"
    )
    p.add_argument("--seed", type=int, default=0)

    p = commands.add_parser(
        "gold", help="add gold queries (known answers: comparisons, or TRL preference rows), or a qualification batch"
    )
    _db_option(p)
    p.add_argument("comparisons")
    p.add_argument("--name", required=True)
    p.add_argument("--qualification", action="store_true", help="labelers must pass these before any other work")
    p.add_argument("--instructions", default="")

    p = commands.add_parser(
        "pull",
        help="export answers: OUT/comparisons.jsonl (for collect.comparisons_path), likert.jsonl, summarize_from_feedback.jsonl",
    )
    _db_option(p)
    p.add_argument("out_dir")
    p.add_argument("--batch", action="append", default=[], help="only these batches (repeatable; default all)")

    p = commands.add_parser("simulate", help="a simulated labeler answering queries through a running app")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--user", required=True)
    p.add_argument("--password-env", default="")
    p.add_argument("--task", default="sentiment", help="task whose gold scorer judges (sentiment)")
    p.add_argument("--temperature", type=float, default=0.0, help="Bradley-Terry / Plackett-Luce noise temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max", type=int, default=None, help="stop after this many answers")
    p.add_argument(
        "--likert-from",
        default="",
        metavar="RUN_DIR",
        help="for likert queries: the 1-7 cut points are the septiles of the gold scores of RUN_DIR/collect/samples.jsonl (the pushed batch)",
    )


def main_label(args: argparse.Namespace) -> int:
    """Run one `rlhf label` action; bad input prints `rlhf: error: ...` and returns 2."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return run_label_command(args)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        print(f"rlhf: error: {error}", file=sys.stderr)
        return 2


def run_label_command(args: argparse.Namespace) -> int:
    command = args.label_command
    if command == "simulate":
        task = get_task(args.task)
        if task.gold_scorer is None:
            raise ValueError(f"task {args.task!r} has no gold scorer to simulate a labeler with")
        client = AppLabelerClient(args.url, args.user, _read_password(args.password_env))
        labeler = SimulatedLabeler(task.gold_scorer, args.temperature, args.seed, name=args.user)
        if args.likert_from:
            path = Path(args.likert_from) / "collect" / "samples.jsonl"
            if not path.exists():
                raise FileNotFoundError(f"{path}: no samples to calibrate the Likert scale on")
            samples = read_jsonl(path, Sample)
            labeler.calibrate_likert(task.gold_scorer([s.prompt for s in samples], [s.response for s in samples]))
        print(json.dumps({"answered": len(label_through_app(client, labeler, args.max))}))
        return 0

    sessions = open_database(args.db or None)
    if command == "serve":
        import uvicorn  # lazy: a heavy import, needed for the server only

        settings = LabelSettings(
            database_url=args.db,
            gold_threshold=args.gold_threshold,
            login_max_failures_per_user=args.login_max_failures_per_user,
            login_max_failures_per_address=args.login_max_failures_per_address,
            login_window_seconds=args.login_window_seconds,
            cookie_https_only=args.cookie_secure,
            max_body_bytes=args.max_body_bytes,
        )
        uvicorn.run(
            create_app(settings, sessions),
            host=args.host,
            port=args.port,
            log_level="warning",
            proxy_headers=args.trust_proxy_headers,
        )
        return 0
    with sessions() as db:
        if command == "add-user":
            user = create_user(db, args.name, _read_password(args.password_env), args.role, simulated=args.simulated)
            print(f"created {user.role} {user.name!r}")
        elif command == "unlock":
            if find_user(db, args.name) is None:
                raise ValueError(f"no user {args.name!r}")
            clear_account(db, args.name)
            if args.address:
                clear_address(db, args.address)
            print(
                f"cleared the login attempts on {args.name!r}" + (f" and from {args.address}" if args.address else "")
            )
        elif command == "end-sessions":
            user = find_user(db, args.name)
            if user is None:
                raise ValueError(f"no user {args.name!r}")
            print(f"ended {end_all_sessions(db, user.id)} session(s) of {user.name!r}")
        elif command == "push":
            kind = args.kind or RunDir(args.run_dir).load_config().collect.kind
            batch = push_samples(
                db,
                args.run_dir,
                kind,
                args.name,
                args.overlap_share,
                args.overlap_labelers,
                args.seed,
                args.instructions,
            )
            print(f"pushed batch {batch.name!r}: {batch_size(db, batch.id)} {kind} queries")
        elif command == "gold":
            batch = push_gold(db, args.comparisons, args.name, args.qualification, args.instructions)
            print(
                f"added {'qualification' if args.qualification else 'gold'} batch {batch.name!r}: {batch_size(db, batch.id)} queries"
            )
        elif command == "pull":
            counts = pull_answers(db, args.out_dir, args.batch)
            print(json.dumps(counts))
            print(f"reward stage: set collect.comparisons_path={os.path.join(args.out_dir, 'comparisons.jsonl')}")
    return 0


def batch_size(db, batch_id: int) -> int:
    return db.scalar(select(func.count(Query.id)).where(Query.batch_id == batch_id)) or 0
