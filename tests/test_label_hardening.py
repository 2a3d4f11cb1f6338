"""Hardening of the labeling app (issue 20), on SQLite and on a PostgreSQL server the test starts where the
database is involved: a body-size limit before any form is read, one open Andon pull per run, control
characters refused in every form, ids beyond 64 bits and lost races answered 404/409 instead of 500,
private secret-key and database files, bounded instructions, and the `serve`/`push` options."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from label_helpers import PASSWORD, Browserless, running_server, write_samples
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from rlhf.cli import build_parser
from rlhf.cli import main as rlhf_main
from rlhf.labeling_app import admin_routes, andon, app, auth, exchange
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import MIGRATIONS, make_engine, open_database
from rlhf.labeling_app.guards import MAX_ROW_ID
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import AndonPull, Instructions, Query, Run, User, utcnow
from rlhf.labeling_app.work import MAX_INSTRUCTIONS_LENGTH

TOO_BIG_ID = "99999999999999999999"  # > 2**64


@pytest.fixture
def sessions(database_url):
    return open_database(database_url)


def settings(**overrides) -> LabelSettings:
    return LabelSettings(secret_key="test-secret-key", gold_rate=0.0, **overrides)


def team_and_work(sessions, tmp_path: Path) -> tuple[int, int]:
    """Admin, researcher and one labeler, and a pairwise batch of a registered run; (batch id, run id)."""
    write_samples(tmp_path / "run", prompts=4, per_prompt=2)
    with sessions() as db:
        batch = exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
        create_user(db, "admin", PASSWORD, "admin")
        create_user(db, "rita", PASSWORD, "researcher")
        create_user(db, "lab0", PASSWORD, "labeler")
        return batch.id, batch.run_id


def anonymous(url: str) -> Browserless:
    client = Browserless.__new__(Browserless)
    client.http = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    return client


# ---------------------------------------------------------------- 3. request size before authentication


def call_asgi(application, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """POST ``chunks`` to ``path`` of an ASGI app; (status, body bytes the app pulled from the client)."""
    pulled, status = 0, [0]
    pending = list(chunks)

    async def receive():
        nonlocal pulled
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(application(scope, receive, send))
    return status[0], pulled


MULTIPART = b"multipart/form-data; boundary=xyz"


def multipart_chunks(total: int, chunk: int = 16384) -> list[bytes]:
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    body += b"x" * (total - len(body) - 8) + b"\r\n--xyz--"
    return [body[start : start + chunk] for start in range(0, len(body), chunk)]


@pytest.mark.parametrize(
    "path", ["/login", "/logout", "/label/submit", "/admin/users", "/runs/1/andon", "/admin/batches/1/instructions"]
)
def test_an_oversized_body_is_refused_before_it_is_read_on_every_route(tmp_path, path):
    application = create_app(settings(max_body_bytes=65536), open_database(f"sqlite:///{tmp_path / 'l.db'}"))
    chunks = multipart_chunks(2_000_000)
    declared = [(b"content-type", MULTIPART), (b"content-length", b"300000000")]
    assert call_asgi(application, path, declared, chunks) == (413, 0)  # refused on its header, nothing read
    status, pulled = call_asgi(application, path, [(b"content-type", MULTIPART)], chunks)  # chunked: no length
    assert status == 413 and pulled <= 65536 + 16384


def test_a_300_mb_upload_over_http_gets_413_while_most_of_it_is_unsent(tmp_path):
    application = create_app(settings(), open_database(f"sqlite:///{tmp_path / 'l.db'}"))
    with running_server(application) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /admin/users HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                b"Content-Length: 300000000\r\n\r\n" + b"x" * 65536
            )
            reply = sock.recv(4096)  # before the fix the server waits for the other 299.9 MB (socket timeout)
    assert reply.startswith(b"HTTP/1.1 413")


def test_the_small_forms_of_the_app_fit_the_default_limit(tmp_path):
    limit = LabelSettings().max_body_bytes
    assert limit == 1 << 20 and 4 * MAX_INSTRUCTIONS_LENGTH < limit  # UTF-8 instructions at the bound still fit
    with pytest.raises(ValueError, match="max_body_bytes"):
        LabelSettings(max_body_bytes=0)


# ---------------------------------------------------------------- 5. the Andon cord race


def stop_file_agrees(sessions, run_id: int) -> tuple[int, bool]:
    with sessions() as db:
        run = db.get(Run, run_id)
        opened = db.scalar(
            select(func.count(AndonPull.id)).where(AndonPull.run_id == run_id, AndonPull.released_at.is_(None))
        )
        return opened, Path(run.stop_file).exists()


def test_concurrent_pulls_open_one_pull_and_one_release_clears_the_run(sessions, tmp_path):
    _batch_id, run_id = team_and_work(sessions, tmp_path)
    with sessions() as db:
        for index in range(8):
            create_user(db, f"puller{index}", PASSWORD, "labeler")
    start = threading.Barrier(8)

    def pull(index: int) -> int:
        with sessions() as db:
            run, user = db.get(Run, run_id), db.scalar(select(User).where(User.name == f"puller{index}"))
            start.wait()
            return andon.pull_cord(db, run, user, f"reason {index}").id

    with ThreadPoolExecutor(8) as pool:
        pulls = list(pool.map(pull, range(8)))
    assert len(set(pulls)) == 1  # everyone got the same open pull
    assert stop_file_agrees(sessions, run_id) == (1, True)
    with sessions() as db:
        andon.release_cord(db, db.get(Run, run_id), db.scalar(select(User).where(User.name == "rita")))
    assert stop_file_agrees(sessions, run_id) == (0, False)  # PPO may resume and the banner says so


def test_mixed_concurrent_pulls_and_releases_leave_the_stop_file_agreeing_with_the_database(sessions, tmp_path):
    _batch_id, run_id = team_and_work(sessions, tmp_path)
    for round_ in range(4):
        start = threading.Barrier(6)

        def act(index: int) -> None:
            with sessions() as db:
                run, user = db.get(Run, run_id), db.scalar(select(User).where(User.name == "rita"))
                start.wait()
                if (index + round_) % 2:
                    andon.pull_cord(db, run, user, f"round {round_}")
                else:
                    andon.release_cord(db, run, user)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(act, range(6)))
        opened, exists = stop_file_agrees(sessions, run_id)
        assert opened <= 1 and exists == (opened == 1)


def test_the_database_refuses_a_second_open_pull_and_pull_cord_returns_the_first(sessions, tmp_path, monkeypatch):
    _batch_id, run_id = team_and_work(sessions, tmp_path)
    with sessions() as db:
        user = db.scalar(select(User).where(User.name == "lab0"))
        first = andon.pull_cord(db, db.get(Run, run_id), user, "first")
        db.add(AndonPull(run_id=run_id, pulled_by_id=user.id, reason="second"))
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        db.add(AndonPull(run_id=run_id, pulled_by_id=user.id, reason="old", released_at=utcnow()))
        db.add(AndonPull(run_id=run_id, pulled_by_id=user.id, reason="older", released_at=utcnow()))
        db.commit()  # released pulls are history: any number of them
        real_open_pull = andon.open_pull
        stale = iter([None])  # the first look misses the open pull, as another server process would
        monkeypatch.setattr(andon, "open_pull", lambda db, run: next(stale, None) or real_open_pull(db, run))
        assert andon.pull_cord(db, db.get(Run, run_id), user, "a later reason").id == first.id


def test_migration_0003_closes_duplicate_open_pulls_then_adds_the_index(database_url):
    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.exec_driver_sql(
            "INSERT INTO users (id, name, password_hash, role, paused, pause_reason, qualification, simulated,"
            " created_at) VALUES (1, 'u', 'x', 'labeler', false, '', 'passed', '', '2026-01-01')"
        )
        connection.exec_driver_sql("INSERT INTO runs (id, name, run_dir, stop_file) VALUES (1, 'r', '/r', '/r/A')")
        for pull_id in (1, 2, 3):
            connection.exec_driver_sql(
                "INSERT INTO andon_pulls (id, run_id, pulled_by_id, reason, pulled_at)"
                f" VALUES ({pull_id}, 1, 1, 'why', '2026-01-01')"
            )
    sessions = open_database(database_url)  # upgrades to head
    with sessions() as db:
        assert [p.id for p in andon.open_pulls(db)] == [3]
        db.add(AndonPull(run_id=1, pulled_by_id=1, reason="again"))
        with pytest.raises(IntegrityError):
            db.commit()


# ---------------------------------------------------------------- 6. control characters in forms


def test_control_characters_are_refused_with_422_in_every_form_field(sessions, tmp_path):
    batch_id, run_id = team_and_work(sessions, tmp_path)
    with running_server(create_app(settings(), sessions)) as url:
        nobody = anonymous(url)
        refused = [nobody.http.post("/login", data={"name": "lab0\x00", "password": PASSWORD})]  # no session at all
        csrf = nobody.csrf()
        refused += [
            nobody.http.post("/login", data={"name": "lab\x00", "password": PASSWORD, "csrf": csrf}),
            nobody.http.post("/login", data={"name": "lab0", "password": "pass\x00word", "csrf": csrf}),
            nobody.http.post("/login", data={"name": "lab0\n", "password": PASSWORD, "csrf": csrf}),
            nobody.http.post("/login", data={"name": "lab0", "password": PASSWORD, "csrf": csrf + "\x1b"}),
        ]
        admin, labeler = Browserless(url, "admin"), Browserless(url, "lab0")
        refused += [
            admin.post("/admin/users", {"name": "eve\x00", "password": PASSWORD, "role": "labeler"}, "/admin"),
            admin.post("/admin/users", {"name": "eve", "password": PASSWORD + "\x7f", "role": "labeler"}, "/admin"),
            admin.post("/admin/users", {"name": "eve", "password": PASSWORD, "role": "labeler\x00"}, "/admin"),
            admin.post(f"/admin/batches/{batch_id}/instructions", {"text": "Be kind\x00"}, "/admin"),
            admin.post(f"/admin/batches/{batch_id}/instructions", {"text": "Be kind\x0b"}, "/admin"),
            admin.post("/admin/users/1/unpause", {"x\x00": "1"}, "/admin"),
            labeler.post(f"/runs/{run_id}/andon", {"reason": "broken\x00"}, "/runs"),
            labeler.post(f"/runs/{run_id}/release", {"csrf\x00": "1"}, "/runs"),
            labeler.post("/logout", {"next": "\x00"}),
        ]
        token = labeler.get("/api/next").json()["token"]
        answer = {"token": token, "choice": "0", "confidence": "5"}
        refused += [
            labeler.post("/label/submit", {**answer, "note": "fine\x00"}),
            labeler.post("/label/submit", {**answer, "choice": "0\x00"}),
            labeler.post("/label/submit", {**answer, "token": token + "\x00"}),
            labeler.post("/label/submit", {**answer, "flags": "off_topic\x00"}),
            labeler.post("/label/submit", {**answer, "instructions_version": "1\x85"}),
        ]
        for response in refused:
            assert response.status_code == 422, (response.request.url, response.status_code, response.text[:200])
            assert "control character" in response.json()["detail"]
        assert "U+0000 at position 4" in refused[0].json()["detail"]
        # tab and newlines stay allowed in free text
        assert labeler.post("/label/submit", {**answer, "note": "line 1\r\n\tline 2"}).status_code == 303
        text = "Prefer\tthe shorter answer.\nAlways."
        assert admin.post(f"/admin/batches/{batch_id}/instructions", {"text": text}, "/admin").status_code == 303
        assert labeler.post(f"/runs/{run_id}/andon", {"reason": "all the\nsame word"}, "/runs").status_code == 303
    with sessions() as db:
        assert db.scalar(select(User).where(User.name.like("eve%"))) is None
        assert db.scalar(select(Instructions.text).order_by(Instructions.id.desc()).limit(1)) == text


# ---------------------------------------------------------------- 7. 404 and 409 instead of 500


def test_ids_beyond_64_bits_and_non_numbers_are_404_on_every_route(sessions, tmp_path):
    team_and_work(sessions, tmp_path)
    with running_server(create_app(settings(), sessions)) as url:
        labeler, admin = Browserless(url, "lab0"), Browserless(url, "admin")
        for bad in (TOO_BIG_ID, str(2**63), str(2**63 - 1), str(2**31), str(MAX_ROW_ID), "0", "-1", "abc"):
            assert labeler.get(f"/my/{bad}").status_code == 404
            assert labeler.post(f"/runs/{bad}/andon", {"reason": "why"}, "/runs").status_code == 404
            assert admin.post(f"/runs/{bad}/release", {}, "/admin").status_code == 404
            assert admin.post(f"/admin/users/{bad}/unpause", {}, "/admin").status_code == 404
            assert admin.post(f"/admin/batches/{bad}/instructions", {"text": "x"}, "/admin").status_code == 404


def test_a_lost_race_on_a_unique_constraint_is_409_with_a_clear_message(sessions, tmp_path, monkeypatch):
    batch_id, _run_id = team_and_work(sessions, tmp_path)

    def create_user_without_looking(
        db, name, password, role, simulated=""
    ):  # as if the other insert came after the check
        db.add(User(name=name, name_key=auth.name_key(name), password_hash=auth.hash_password(password), role=role))
        db.commit()

    with running_server(create_app(settings(), sessions)) as url:
        admin = Browserless(url, "admin")
        monkeypatch.setattr(admin_routes, "current_instructions", lambda db, batch_id: None)  # a stale version read
        response = admin.post(f"/admin/batches/{batch_id}/instructions", {"text": "Be brief."}, "/admin")
        assert response.status_code == 409 and "reload the page and try again" in response.json()["detail"]
        monkeypatch.setattr(auth, "create_user", create_user_without_looking)
        response = admin.post("/admin/users", {"name": "lab0", "password": PASSWORD, "role": "labeler"}, "/admin")
        assert response.status_code == 409 and "user with this name" in response.json()["detail"]
        assert admin.get("/admin").status_code == 200  # the server carries on


def test_concurrent_instruction_updates_give_distinct_versions_or_409(sessions, tmp_path):
    batch_id, _run_id = team_and_work(sessions, tmp_path)
    with running_server(create_app(settings(), sessions)) as url:
        admins = [Browserless(url, "admin") for _ in range(6)]
        tokens = [client.csrf("/admin") for client in admins]
        start = threading.Barrier(6)

        def publish(index: int) -> int:
            start.wait()
            form = {"text": f"version from admin {index}", "csrf": tokens[index]}
            return admins[index].http.post(f"/admin/batches/{batch_id}/instructions", data=form).status_code

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(publish, range(6)))
    assert set(codes) <= {303, 409} and 303 in codes
    with sessions() as db:
        versions = list(db.scalars(select(Instructions.version).where(Instructions.batch_id == batch_id)))
    assert sorted(versions) == list(range(1, 2 + codes.count(303)))


# ---------------------------------------------------------------- 8. files, instructions, options


def test_the_secret_key_and_the_sqlite_files_are_private_from_creation(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_LABEL_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("RLHF_LABEL_SECRET", raising=False)

    def no_chmod(*_args, **_kwargs):
        raise AssertionError("the file was created readable by others and tightened later")

    monkeypatch.setattr(Path, "chmod", no_chmod)
    monkeypatch.setattr(os, "chmod", no_chmod)
    old_umask = os.umask(0o022)
    try:
        key = app.secret_key(LabelSettings())
        assert app.secret_key(LabelSettings()) == key and len(key) >= 32
        sessions = open_database()  # the default SQLite file in the data directory
        with sessions() as db:
            create_user(db, "ann", PASSWORD, "labeler")  # a write: the -wal and -shm files exist now
            folder = tmp_path / "data"
            names = {"secret_key", "label.db", "label.db-wal", "label.db-shm"}
            assert names <= {p.name for p in folder.iterdir()}
            modes = {name: stat.S_IMODE((folder / name).stat().st_mode) for name in names}
    finally:
        os.umask(old_umask)
    assert modes == dict.fromkeys(names, 0o600)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_instructions_must_be_non_empty_and_bounded(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 'l.db'}")
    batch_id, _run_id = team_and_work(sessions, tmp_path)
    with running_server(create_app(settings(), sessions)) as url:
        admin = Browserless(url, "admin")
        for text, why in (("", "empty"), (" \n\t ", "empty"), ("x" * (MAX_INSTRUCTIONS_LENGTH + 1), "at most")):
            response = admin.post(f"/admin/batches/{batch_id}/instructions", {"text": text}, "/admin")
            assert response.status_code == 422 and why in response.json()["detail"]
        one_mb = admin.post(f"/admin/batches/{batch_id}/instructions", {"text": "x" * 1_000_000}, "/admin")
        assert one_mb.status_code == 422 and "at most" in one_mb.json()["detail"]
        huge = admin.post(f"/admin/batches/{batch_id}/instructions", {"text": "x" * 2_000_000}, "/admin")
        assert huge.status_code == 413  # over the body limit: refused before it is read
        fits = admin.post(f"/admin/batches/{batch_id}/instructions", {"text": "y" * MAX_INSTRUCTIONS_LENGTH}, "/admin")
        assert fits.status_code == 303
    with sessions() as db:
        assert list(db.scalars(select(Instructions.version).where(Instructions.batch_id == batch_id))) == [1, 2]
        write_samples(tmp_path / "run2", prompts=2, per_prompt=2)
        with pytest.raises(ValueError, match="at most"):
            exchange.push_samples(db, tmp_path / "run2", "pairwise", instructions="z" * (MAX_INSTRUCTIONS_LENGTH + 1))


def test_serve_has_no_overlap_share_option_and_push_applies_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["label", "serve", "--overlap-share", "0.5"])
    assert refused.value.code == 2 and "unrecognized arguments: --overlap-share" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'l.db'}"
    write_samples(tmp_path / "run", prompts=10, per_prompt=2)
    argv = ["label", "push", str(tmp_path / "run"), "--db", url, "--kind", "pairwise"]
    assert rlhf_main([*argv, "--overlap-share", "0.5", "--overlap-labelers", "3"]) == 0
    with open_database(url)() as db:
        assert sorted(db.scalars(select(Query.target_labelers))) == [1] * 5 + [3] * 5


def test_serve_passes_max_body_bytes_to_the_app(tmp_path, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **_options: served.append(application))
    monkeypatch.setenv("RLHF_LABEL_SECRET", "test-secret-key")
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert rlhf_main(["label", "serve", "--db", url, "--max-body-bytes", "1234"]) == 0
    assert served[0].state.settings.max_body_bytes == 1234
    status, _pulled = call_asgi(served[0], "/login", [(b"content-length", b"1235")], [b"x" * 1235])
    assert status == 413


def test_only_unique_violations_become_409():
    import sqlite3

    from rlhf.labeling_app.guards import is_unique_violation

    unique = IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed: users.name"))
    not_null = IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL constraint failed: users.role"))
    assert is_unique_violation(unique) and not is_unique_violation(not_null)  # a bug stays a 500
