"""Load benchmark of the labeling app: starts the real server (`rlhf label serve`, its own process) on
127.0.0.1 with a fresh SQLite database (or a throw-away PostgreSQL server with --postgres, or --db URL), lets
N simulated labelers submit concurrently for a bounded time (each also re-submits some forms, as a double
click would) while --admins admins publish instructions, add and unpause accounts, pull and release the
Andon cord and read the dashboard, then checks every accepted judgment is in the database exactly once and
that no admin action failed (409 for a lost race on an instructions version counts as a conflict, not an
error). Last line:
judgments_per_s=<x> accepted=<n> stored=<n> lost=<n> duplicated=<n>

    .venv/bin/python bench/labeling_load.py [--labelers 50] [--seconds 20] [--admins 4] [--postgres | --db URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import func, select

from rlhf.data.io import write_jsonl
from rlhf.data.records import Sample
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.labeling_app import exchange
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.simulated_client import AppLabelerClient, form_from_comparison
from rlhf.labeling_app.tables import Assignment, Batch, Judgment, Query, User

PASSWORD = "load-test-password"
TESTS = Path(__file__).resolve().parent.parent / "tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(
    url: str, folder: Path, labelers: int, admins: int, queries: int, kind: str, tag: str
) -> dict[str, int | str]:
    """Push ``queries`` synthetic queries (10 % overlap by 5) and create the labeler and admin accounts;
    returns the batch's name and id, its run's id and a labeler's id."""
    per_prompt = {"pairwise": 2, "best_of_k": 4, "ranking": 5}[kind]
    samples = [
        Sample(prompt=f"load prompt {tag} {p}", response=f"answer {p} number {k}", policy=f"policy{k}")
        for p in range(queries)
        for k in range(per_prompt)
    ]
    write_jsonl(folder / "run" / "collect" / "samples.jsonl", samples)
    sessions = open_database(url)
    with sessions() as db:
        batch = exchange.push_samples(
            db, folder / "run", kind, name=f"load-{tag}", overlap_share=0.1, overlap_labelers=5
        )
        for index in range(labelers):
            create_user(db, f"load-{tag}-{index}", PASSWORD, "labeler", simulated="load benchmark")
        for index in range(admins):
            create_user(db, f"load-{tag}-admin{index}", PASSWORD, "admin")
        labeler_id = db.scalar(select(User.id).where(User.name == f"load-{tag}-0")) or 0
        return {"name": batch.name, "id": batch.id, "run_id": batch.run_id or 0, "labeler_id": labeler_id}


@contextlib.contextmanager
def database(args: argparse.Namespace, folder: Path):
    """The database URL: --db, a throw-away PostgreSQL server (--postgres, as the tests start one), or SQLite."""
    if args.postgres:
        sys.path.insert(0, str(TESTS))
        from label_helpers import postgres_server  # the tests' throw-away server, only for --postgres

        with postgres_server() as url:
            yield url
    else:
        yield args.db or f"sqlite:///{folder / 'label.db'}"


def start_server(url: str, port: int, folder: Path) -> subprocess.Popen:
    env = {**os.environ, "RLHF_LABEL_SECRET": "load-benchmark-secret", "RLHF_LABEL_DATA": str(folder)}
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", "label", "serve", "--db", url, "--port", str(port)], env=env
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
    server.kill()
    raise RuntimeError("the server did not answer within 180 s")


def labeler_loop(
    client: AppLabelerClient,
    start: threading.Barrier,
    deadline: list[float],
    accepted: list[str],
    errors: list[str],
    seed: int,
) -> None:
    rng = random.Random(seed)
    name = client.name
    labeler = SimulatedLabeler(
        lambda prompts, responses: [float(r.rsplit(" ", 1)[-1]) for r in responses], 1.0, seed, name
    )
    start.wait()
    try:
        while time.monotonic() < deadline[0]:
            query = client.next_query()
            if query["status"] != "ok":
                break
            fields = form_from_comparison(labeler.label(query["prompt"], query["responses"], query["kind"]))
            repeats = 2 if rng.random() < 0.1 else 1  # a double click now and then
            codes = [
                client.submit(query["token"], fields, query["instructions_version"]).status_code for _ in range(repeats)
            ]
            if codes[0] == 303:
                accepted.append(query["token"])
            else:
                errors.append(f"{name}: HTTP {codes}")
        client.close()
    except Exception as error:  # noqa: BLE001 (reported below, and the run counts as failed)
        errors.append(f"{name}: {type(error).__name__}: {error}")


ADMIN_ACTIONS = ("instructions", "add_user", "unpause", "andon", "view")


def admin_action(client: AppLabelerClient, action: str, batch: dict[str, int | str], step: int) -> list[int]:
    """Do one admin action through the app; the HTTP status codes of its requests."""
    post = lambda path, data: client.http.post(path, data={**data, "csrf": client.csrf}).status_code  # noqa: E731
    if action == "instructions":
        return [post(f"/admin/batches/{batch['id']}/instructions", {"text": f"Version by {client.name}, step {step}."})]
    if action == "add_user":
        return [post("/admin/users", {"name": f"{client.name}-new{step}", "password": PASSWORD, "role": "labeler"})]
    if action == "unpause":
        return [post(f"/admin/users/{batch['labeler_id']}/unpause", {})]
    if action == "andon":
        return [
            post(f"/runs/{batch['run_id']}/andon", {"reason": "load benchmark"}),
            post(f"/runs/{batch['run_id']}/release", {}),
        ]
    return [client.http.get("/admin").status_code, client.http.get("/api/dashboard").status_code]


def admin_loop(
    client: AppLabelerClient,
    batch: dict[str, int | str],
    start: threading.Barrier,
    deadline: list[float],
    done: Counter,
    errors: list[str],
) -> None:
    start.wait()
    step = 0
    try:
        while time.monotonic() < deadline[0]:
            action = ADMIN_ACTIONS[step % len(ADMIN_ACTIONS)]
            for code in admin_action(client, action, batch, step):
                if code in (200, 303):
                    done[action] += 1
                elif code == 409 and action == "instructions":  # two admins published the same version at once
                    done["conflicts"] += 1
                else:
                    errors.append(f"{client.name}: {action}: HTTP {code}")
            step += 1
        client.close()
    except Exception as error:  # noqa: BLE001 (reported below, and the run counts as failed)
        errors.append(f"{client.name}: {type(error).__name__}: {error}")


def verify(url: str, batch_name: str, accepted: list[str]) -> tuple[int, int, int]:
    """(stored, lost, duplicated): judgments of the batch, accepted tokens without a judgment, extra copies."""
    sessions = open_database(url)
    with sessions() as db:
        rows = db.execute(
            select(Assignment.token, Judgment.query_id, Judgment.user_id)
            .join(Judgment, Judgment.assignment_id == Assignment.id)
            .join(Query, Judgment.query_id == Query.id)
            .join(Batch, Query.batch_id == Batch.id)
            .where(Batch.name == batch_name)
        ).all()
        over_target = db.scalar(
            select(func.count()).select_from(
                select(Judgment.query_id)
                .join(Query, Judgment.query_id == Query.id)
                .join(Batch, Query.batch_id == Batch.id)
                .where(Batch.name == batch_name)
                .group_by(Judgment.query_id, Query.target_labelers)
                .having(func.count(Judgment.id) > Query.target_labelers)
                .subquery()
            )
        )
    per_token = Counter(token for token, _, _ in rows)
    per_pair = Counter((query_id, user_id) for _, query_id, user_id in rows)
    duplicated = sum(n - 1 for n in per_token.values()) + sum(n - 1 for n in per_pair.values()) + over_target
    lost = len(set(accepted) - set(per_token))
    return len(rows), lost, duplicated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", default="", help="database URL (default: a fresh SQLite file in a temp folder)")
    where.add_argument("--postgres", action="store_true", help="start a throw-away PostgreSQL server (as the tests do)")
    parser.add_argument("--labelers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the labelers submit")
    parser.add_argument("--queries", type=int, default=20000, help="queries pushed (more than can be answered in time)")
    parser.add_argument("--kind", choices=("pairwise", "best_of_k", "ranking"), default="pairwise")
    parser.add_argument("--admins", type=int, default=0, help="admins doing admin actions while the labelers submit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-label-load-") as temp, database(args, Path(temp)) as url:
        folder = Path(temp)
        tag = str(int(time.time()))
        batch = prepare(url, folder, args.labelers, args.admins, args.queries, args.kind, tag)
        port = free_port()
        server = start_server(url, port, folder)
        accepted: list[str] = []
        errors: list[str] = []
        admin_done: Counter = Counter()
        try:
            names = [f"load-{tag}-{index}" for index in range(args.labelers)]
            names += [f"load-{tag}-admin{index}" for index in range(args.admins)]
            with ThreadPoolExecutor(8) as pool:  # logins verify Argon2 hashes: slow on purpose, so in parallel
                clients = list(
                    pool.map(lambda name: AppLabelerClient(f"http://127.0.0.1:{port}", name, PASSWORD), names)
                )
            start, deadline = threading.Barrier(args.labelers + args.admins + 1), [0.0]
            threads = [
                threading.Thread(target=labeler_loop, args=(client, start, deadline, accepted, errors, index))
                for index, client in enumerate(clients[: args.labelers])
            ]
            threads += [
                threading.Thread(target=admin_loop, args=(client, batch, start, deadline, admin_done, errors))
                for client in clients[args.labelers :]
            ]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            deadline[0] = started + args.seconds
            start.wait()  # everyone logged in: the clock starts now
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
        stored, lost, duplicated = verify(url, str(batch["name"]), accepted)
    for error in errors[:10]:
        print(error, file=sys.stderr)
    backend = "postgresql" if args.postgres else (args.db.split(":")[0] if args.db else "sqlite")
    print(f"labelers={args.labelers} admins={args.admins} seconds={elapsed:.1f} db={backend} errors={len(errors)}")
    if args.admins:
        print("admin_actions " + " ".join(f"{key}={admin_done[key]}" for key in (*ADMIN_ACTIONS, "conflicts")))
    print(
        f"judgments_per_s={len(accepted) / elapsed:.1f} accepted={len(accepted)} stored={stored} lost={lost} duplicated={duplicated}"
    )
    return 0 if not errors and lost == 0 and duplicated == 0 and stored == len(accepted) else 1


if __name__ == "__main__":
    sys.exit(main())
