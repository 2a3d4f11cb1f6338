"""Login sessions and the login limits of the labeling app, over HTTP against a real server on SQLite and on a
PostgreSQL server the test starts: logout and "end sessions" revoke the cookie server-side, concurrent guesses
cannot overtake the per-account limit (counted in the database, so across server processes), a locked admin
gets back in with `rlhf label unlock`, `serve --cookie-secure` sends Secure cookies and HSTS, the admin page
echoes no text from the URL, and user names are NFKC-normalised, compared case-insensitively and free of
control and format characters."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from alembic import command
from alembic.config import Config
from label_helpers import PASSWORD, Browserless, running_server
from sqlalchemy import select
from starlette.testclient import TestClient

from rlhf.cli import main
from rlhf.labeling_app import auth
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import MIGRATIONS, make_engine, open_database
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import User


@pytest.fixture
def sessions(database_url):
    sessions = open_database(database_url)
    with sessions() as db:
        create_user(db, "admin", PASSWORD, "admin")
        for name in ("lab0", "lab1"):
            create_user(db, name, PASSWORD, "labeler")
    return sessions


def settings(**overrides) -> LabelSettings:
    return LabelSettings(secret_key="test-secret-key", gold_rate=0.0, **overrides)


def with_cookie(url: str, cookie: str) -> httpx.Client:
    """A fresh client that replays a copied session cookie."""
    return httpx.Client(base_url=url, cookies={"rlhf_label": cookie}, follow_redirects=False, timeout=30)


def login(url: str, name: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as http:
        csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
        return http.post("/login", data={"name": name, "password": password, "csrf": csrf})


def test_logout_and_ended_sessions_refuse_a_replayed_cookie(sessions, database_url, capsys):
    with running_server(create_app(settings(), sessions)) as url:
        lab0 = Browserless(url, "lab0")
        copied = lab0.http.cookies["rlhf_label"]
        assert with_cookie(url, copied).get("/my").status_code == 200
        assert lab0.post("/logout", {}, "/my").status_code == 303
        replayed = with_cookie(url, copied).get("/my")
        assert replayed.status_code == 303 and replayed.headers["location"] == "/login"
        # an admin ends all of lab1's sessions (two browsers) from the admin page; the admin's own stays
        first, second, admin = Browserless(url, "lab1"), Browserless(url, "lab1"), Browserless(url, "admin")
        with sessions() as db:
            lab1_id = db.scalar(select(User.id).where(User.name == "lab1"))
        assert f'action="/admin/users/{lab1_id}/end-sessions"' in admin.get("/admin").text
        ended = admin.post(f"/admin/users/{lab1_id}/end-sessions", {}, "/admin")
        assert ended.status_code == 303 and "ended 2 sessions of lab1" in admin.get("/admin").text
        for browser in (first, second):
            assert browser.get("/my").headers["location"] == "/login"
        assert lab0.http.post(f"/admin/users/{lab1_id}/end-sessions", data={"csrf": "x"}).status_code == 403
        # ... or the operator from the command line
        lab0 = Browserless(url, "lab0")
        assert lab0.get("/my").status_code == 200
        assert main(["label", "end-sessions", "LAB0", "--db", database_url]) == 0
        assert "ended 1 session(s) of 'lab0'" in capsys.readouterr().out
        assert lab0.get("/my").headers["location"] == "/login"
        assert main(["label", "end-sessions", "nobody", "--db", database_url]) == 2
        assert admin.get("/admin").status_code == 200


def test_concurrent_wrong_logins_check_no_more_passwords_than_the_limit(sessions, database_url, monkeypatch):
    checked = []
    real_check = auth.password_matches

    def counting_check(password_hash: str, password: str) -> bool:
        checked.append(password)
        return real_check(password_hash, password)

    monkeypatch.setattr(auth, "password_matches", counting_check)
    guesses = 60
    limits = settings(login_max_failures_per_address=1000)
    # two apps with their own connection pools on one database stand for two uvicorn worker processes
    with (
        running_server(create_app(limits, sessions)) as first,
        running_server(create_app(limits, open_database(database_url))) as second,
    ):
        clients = [
            httpx.Client(base_url=(first, second)[i % 2], follow_redirects=False, timeout=60) for i in range(guesses)
        ]
        tokens = [re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1) for c in clients]
        start = threading.Barrier(guesses)

        def guess(index: int) -> int:
            start.wait()
            form = {"name": "lab0", "password": f"wrong guess {index}", "csrf": tokens[index]}
            return clients[index].post("/login", data=form).status_code

        with ThreadPoolExecutor(guesses) as pool:
            codes = list(pool.map(guess, range(guesses)))
        assert len(checked) == 5, f"{len(checked)} passwords checked against a limit of 5"
        assert codes.count(401) == 5 and codes.count(429) == guesses - 5
        for url in (first, second):
            assert login(url, "lab0", PASSWORD).status_code == 429  # the right password, while locked
        assert len(checked) == 5
        assert login(second, "lab1", PASSWORD).status_code == 303


def test_login_limits_hold_across_server_processes(sessions, database_url):
    """Two apps with their own database connections stand for two uvicorn worker processes."""
    limits = settings(login_max_failures_per_user=3)
    with running_server(create_app(limits, sessions)) as first:
        assert [login(first, "lab0", "wrong password").status_code for _ in range(3)] == [401] * 3
    with running_server(create_app(limits, open_database(database_url))) as second:
        assert login(second, "lab0", PASSWORD).status_code == 429


def test_unlock_command_lets_a_locked_admin_back_in(sessions, database_url, capsys):
    limits = settings(login_max_failures_per_user=3, login_max_failures_per_address=6)
    with running_server(create_app(limits, sessions), proxy_headers=False) as url:
        assert [login(url, "Admin", "wrong password").status_code for _ in range(3)] == [401] * 3
        assert login(url, "admin", PASSWORD).status_code == 429  # anyone can lock the admin out ...
        assert main(["label", "unlock", "admin", "--db", database_url]) == 0  # ... the operator lets them in
        assert "cleared the login attempts on 'admin'" in capsys.readouterr().out
        assert login(url, "admin", PASSWORD).status_code == 303
        # three more failures (other names) lock the address 127.0.0.1; --address clears it too
        assert [login(url, f"ghost{i}", "wrong password").status_code for i in range(3)] == [401] * 3
        assert "from your address" in login(url, "lab0", PASSWORD).text
        assert main(["label", "unlock", "lab0", "--address", "127.0.0.1", "--db", database_url]) == 0
        assert login(url, "lab0", PASSWORD).status_code == 303
        assert main(["label", "unlock", "nobody", "--db", database_url]) == 2
        assert "no user 'nobody'" in capsys.readouterr().err


@pytest.mark.parametrize("secure", [False, True])
def test_serve_cookie_secure_sends_secure_cookies_and_hsts(database_url, monkeypatch, secure):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.setenv("RLHF_LABEL_SECRET", "test-secret-key")
    assert main(["label", "serve", "--db", database_url, *(["--cookie-secure"] if secure else [])]) == 0
    with TestClient(served["app"], base_url="https://testserver") as client:
        response = client.get("/login")
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith("rlhf_label=") and ("; secure" in cookie) == secure
    assert response.headers.get("strict-transport-security") == ("max-age=31536000" if secure else None)


def test_admin_page_shows_no_text_from_the_url(sessions):
    with running_server(create_app(settings(), sessions)) as url:
        admin = Browserless(url, "admin")
        page = admin.get("/admin?error=Session+expired:+log+in+again+at+evil.example")
        assert page.status_code == 200 and "evil.example" not in page.text
        refused = admin.post("/admin/users", {"name": "Lab0", "password": PASSWORD, "role": "labeler"}, "/admin")
        assert refused.status_code == 422 and "already exists" in refused.text


@pytest.mark.parametrize(
    "name, problem",
    [
        ("Lab1", "already exists (as 'lab1'; names are compared ignoring case)"),
        ("ｌａｂ１", "already exists"),  # fullwidth letters: the same name under NFKC
        (" LAB1 ", "already exists"),
        ("lab\u202e1gpj.exe", "found U+202E RIGHT-TO-LEFT OVERRIDE at position 4"),
        ("zero\u200bwidth", "found U+200B ZERO WIDTH SPACE at position 5"),
        ("nul\x00byte", "must not contain control or format characters"),
        ("", "1..80 characters"),
    ],
)
def test_user_names_are_normalised_compared_ignoring_case_and_free_of_control_characters(sessions, name, problem):
    with sessions() as db:
        with pytest.raises(ValueError, match=re.escape(problem)):
            create_user(db, name, PASSWORD, "labeler")
        assert sorted(db.scalars(select(User.name))) == ["admin", "lab0", "lab1"]


def test_logins_find_the_account_in_any_case_or_unicode_form_and_refuse_odd_names(sessions):
    with sessions() as db:
        user = create_user(db, "Ｍａｒｉａ", PASSWORD, "labeler")  # stored as NFKC: "Maria"
        assert user.name == "Maria" and user.name_key == "maria"
    with running_server(create_app(settings(), sessions)) as url:
        for name in ("maria", "MARIA", "ｍａｒｉａ", "LAB1"):
            assert login(url, name, PASSWORD).status_code == 303
        assert login(url, "lab\u202e1", PASSWORD).status_code == 401
        assert login(url, "lab\x001", PASSWORD).status_code == 422  # the app-wide control-character guard
        admin = Browserless(url, "admin")
        refused = admin.post("/admin/users", {"name": "ev\u202eil", "password": PASSWORD, "role": "admin"}, "/admin")
        assert refused.status_code == 422 and "U+202E RIGHT-TO-LEFT OVERRIDE" in refused.text


def test_migration_gives_old_accounts_name_keys_and_refuses_names_that_differ_only_in_case(tmp_path):
    def at_revision(url: str, revision: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with make_engine(url).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def old_users(url: str, names: list[str]) -> None:
        at_revision(url, "0001")
        with make_engine(url).begin() as connection:
            for name in names:
                connection.exec_driver_sql(
                    "INSERT INTO users (name, password_hash, role, paused, pause_reason, qualification, simulated, "
                    f"created_at) VALUES ('{name}', 'x', 'labeler', 0, '', 'pending', '', '2026-01-01')"
                )

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old_users(url, ["Ann", "bob"])
    with open_database(url)() as db:
        assert dict(db.execute(select(User.name, User.name_key)).all()) == {"Ann": "ann", "bob": "bob"}
    clash = f"sqlite:///{tmp_path / 'clash.db'}"
    old_users(clash, ["Lab1", "lab1"])
    with pytest.raises(RuntimeError, match="users 'Lab1' and 'lab1' differ only in case"):
        open_database(clash)
