"""The real server over HTTP on 127.0.0.1 (uvicorn in a thread), on SQLite and on a PostgreSQL server the
test starts: role routing, a simulated collection round, exactly-once storage, restarts, and attacks
(stored XSS, CSRF, cross-role and cross-labeler access, SQL-injection strings)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from label_helpers import PASSWORD, Browserless, running_server, write_samples
from sqlalchemy import func, inspect, select

from rlhf.data.io import read_jsonl
from rlhf.data.records import Comparison
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.labeling_app import exchange
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.simulated_client import AppLabelerClient, label_through_app
from rlhf.labeling_app.tables import Judgment, Query, User

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SQLI = ["' OR '1'='1", "x'); DROP TABLE users;--", "1; DELETE FROM judgments", '" OR ""="']


@pytest.fixture
def sessions(database_url):
    return open_database(database_url)


def settings(**overrides) -> LabelSettings:
    return LabelSettings(secret_key="test-secret-key", gold_rate=0.0, **overrides)


def add_team(sessions, labelers: int = 2) -> None:
    with sessions() as db:
        create_user(db, "admin", PASSWORD, "admin")
        create_user(db, "rita", PASSWORD, "researcher")
        for index in range(labelers):
            create_user(db, f"lab{index}", PASSWORD, "labeler")


def test_login_routes_each_role_to_its_home_and_refuses_bad_logins(sessions):
    add_team(sessions)
    with running_server(create_app(settings(), sessions)) as url:
        assert httpx.get(url + "/label").headers["location"] == "/login"
        for name, home in (("admin", "/admin"), ("rita", "/dashboard"), ("lab0", "/label")):
            client = Browserless(url, name)
            assert client.get("/").headers["location"] == home
            assert client.get(home).status_code == 200
        anonymous = Browserless.__new__(Browserless)
        anonymous.http = httpx.Client(base_url=url)
        response = anonymous.http.post(
            "/login", data={"name": "lab0", "password": "wrong password", "csrf": anonymous.csrf()}
        )
        assert response.status_code == 401 and "wrong name or password" in response.text


def test_simulated_labelers_run_a_collection_round_end_to_end(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=12, per_prompt=4)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=0.25, overlap_labelers=3)
        for index in range(4):
            create_user(db, f"sim{index}", PASSWORD, "labeler", simulated="length T=0")
    gold = lambda prompts, responses: [float(r.split(".")[-1]) for r in responses]  # noqa: E731 (last digit is best)
    with running_server(create_app(settings(), sessions)) as url:
        clients = [AppLabelerClient(url, f"sim{index}", PASSWORD) for index in range(4)]
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda c: label_through_app(c, SimulatedLabeler(gold, 0.0, name=c.name)), clients))
    assert sum(map(len, done)) == 9 + 3 * 3
    with sessions() as db:
        counts = exchange.pull_answers(db, tmp_path / "out")
        distinct = dict(
            db.execute(
                select(Judgment.query_id, func.count(func.distinct(Judgment.user_id))).group_by(Judgment.query_id)
            ).all()
        )
        assert sorted(distinct.values()) == [1] * 9 + [3] * 3
    comparisons = read_jsonl(tmp_path / "out" / "comparisons.jsonl", Comparison)
    assert counts["comparisons"] == 18 and all(c.best == 3 for c in comparisons)  # the simulated choice, mapped back


def test_admin_publishes_instructions_unpauses_and_the_dashboard_shows_agreement(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=2, per_prompt=4)
    with sessions() as db:
        batch_id = exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=1.0, overlap_labelers=2).id
        create_user(db, "admin", PASSWORD, "admin")
        create_user(db, "rita", PASSWORD, "researcher")
        for name in ("lab0", "lab1"):
            create_user(db, name, PASSWORD, "labeler")
        paused = db.scalar(select(User).where(User.name == "lab1"))
        paused.paused, paused.pause_reason = True, "gold accuracy 20% on 5 gold queries is under 70%"
        db.commit()
    gold = lambda prompts, responses: [float(r.split(".")[-1]) for r in responses]  # noqa: E731
    with running_server(create_app(settings(), sessions)) as url:
        admin = Browserless(url, "admin")
        assert (
            admin.post(
                f"/admin/batches/{batch_id}/instructions", {"text": "Prefer the shorter answer."}, "/admin"
            ).status_code
            == 303
        )
        assert "Instructions (version 2)" in Browserless(url, "lab0").get("/label").text
        assert AppLabelerClient(url, "lab1", PASSWORD).next_query()["status"] == "paused"
        assert admin.post(f"/admin/users/{paused.id}/unpause", {}, "/admin").status_code == 303
        for name in ("lab0", "lab1", "rita"):
            label_through_app(AppLabelerClient(url, name, PASSWORD), SimulatedLabeler(gold, 0.0, name=name))
        stats = Browserless(url, "rita").get("/api/dashboard").json()
        assert (
            stats["agreement"]["labeler_labeler"]["rate"] == 1.0
            and stats["agreement"]["labeler_researcher"]["pairs"] == 4
        )
        page = Browserless(url, "rita").get("/dashboard").text
        assert "labeler – researcher" in page and "100%" in page
    with sessions() as db:
        assert set(db.scalars(select(Judgment.instructions_version))) == {2}


def test_double_and_concurrent_submits_store_one_judgment_and_survive_a_restart(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=3, per_prompt=2)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
    add_team(sessions, labelers=1)
    with running_server(create_app(settings(), sessions)) as url:
        client = AppLabelerClient(url, "lab0", PASSWORD)
        query = client.next_query()
        fields = {"choice": "0", "confidence": "8"}
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: client.submit(query["token"], fields).status_code, range(8)))
        assert codes == [303] * 8
        stale = client.next_query()
    with running_server(create_app(settings(), sessions)) as url:  # a restart on the same database
        client = AppLabelerClient(url, "lab0", PASSWORD)
        assert client.next_query()["token"] == stale["token"]  # the open assignment is still there
        assert client.submit(query["token"], {"choice": "1", "confidence": "1"}).status_code == 303  # a very stale page
    with sessions() as db:
        judgments = list(db.scalars(select(Judgment)))
        assert len(judgments) == 1 and judgments[0].answer["confidence"] == 8


def test_policy_names_are_never_shown_and_text_is_escaped(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=2, per_prompt=2, text=XSS)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
        db.query(Query).update({Query.prompt: XSS + " prompt"})
        db.commit()
    add_team(sessions, labelers=1)
    with running_server(create_app(settings(), sessions)) as url:
        labeler = Browserless(url, "lab0")
        page = labeler.get("/label")
        assert "ppo-secret-policy" not in page.text and "ppo-secret-policy" not in labeler.get("/api/next").text
        assert XSS not in page.text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        token = page.text.split('name="token" value="')[1].split('"')[0]
        labeler.post("/label/submit", {"token": token, "choice": "0", "confidence": "5", "note": XSS})
        mine = labeler.get("/my/1")
        assert XSS not in mine.text and "&lt;img src=x onerror=alert(1)&gt;" in mine.text
        admin = Browserless(url, "admin")
        assert (
            admin.post("/admin/users", {"name": XSS, "password": PASSWORD, "role": "labeler"}, "/admin").status_code
            == 303
        )
        assert XSS not in admin.get("/admin").text


def test_forms_without_a_valid_csrf_token_are_refused(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=2, per_prompt=2)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
    add_team(sessions, labelers=1)
    with running_server(create_app(settings(), sessions)) as url:
        assert httpx.post(url + "/login", data={"name": "lab0", "password": PASSWORD}).status_code == 403
        labeler = Browserless(url, "lab0")
        token = labeler.get("/label").text.split('name="token" value="')[1].split('"')[0]
        form = {"token": token, "choice": "0", "confidence": "5"}
        assert labeler.http.post("/label/submit", data=form).status_code == 403
        assert labeler.http.post("/label/submit", data={**form, "csrf": "forged"}).status_code == 403
        other = Browserless(url, "rita")  # another session's valid token is not this session's
        assert labeler.http.post("/label/submit", data={**form, "csrf": other.csrf("/dashboard")}).status_code == 403
        admin = Browserless(url, "admin")
        assert (
            admin.http.post("/admin/users", data={"name": "eve", "password": PASSWORD, "role": "admin"}).status_code
            == 403
        )
        assert labeler.http.post("/logout").status_code == 403
    with sessions() as db:
        assert (
            db.scalar(select(func.count(Judgment.id))) == 0
            and db.scalar(select(User).where(User.name == "eve")) is None
        )


def test_roles_and_labelers_cannot_reach_each_others_pages_or_data(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=4, per_prompt=2)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
    add_team(sessions, labelers=2)
    with running_server(create_app(settings(), sessions)) as url:
        lab0, lab1, rita = Browserless(url, "lab0"), Browserless(url, "lab1"), Browserless(url, "rita")
        token0 = lab0.get("/label").text.split('name="token" value="')[1].split('"')[0]
        assert lab0.post("/label/submit", {"token": token0, "choice": "1", "confidence": "6"}).status_code == 303
        with sessions() as db:
            judgment_id, answer = db.execute(select(Judgment.id, Judgment.answer)).one()
        assert lab0.get(f"/my/{judgment_id}").status_code == 200 and f'href="/my/{judgment_id}"' in lab0.get("/my").text
        assert lab1.get(f"/my/{judgment_id}").status_code == 404  # another labeler's judgment
        assert f'href="/my/{judgment_id}"' not in lab1.get("/my").text
        lab1.get("/label")
        assert lab1.post("/label/submit", {"token": token0, "choice": "0", "confidence": "9"}).status_code == 404
        for path in ("/admin", "/dashboard", "/api/dashboard"):
            assert lab1.get(path).status_code == 403
        assert lab1.post("/admin/users", {"name": "mallory", "password": PASSWORD, "role": "admin"}).status_code == 403
        assert rita.get("/admin").status_code == 403 and rita.get("/api/dashboard").status_code == 200
        assert (
            rita.post(
                "/admin/users", {"name": "mallory", "password": PASSWORD, "role": "admin"}, "/dashboard"
            ).status_code
            == 403
        )
        admin = Browserless(url, "admin")
        assert admin.get("/label").status_code == 403 and admin.get("/api/next").status_code == 403
    with sessions() as db:
        assert db.scalar(select(User).where(User.name == "mallory")) is None
        assert db.get(Judgment, judgment_id).answer == answer and answer["confidence"] == 6


def test_sql_injection_strings_in_every_text_field_are_stored_as_text(sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=len(SQLI), per_prompt=2)
    with sessions() as db:
        batch = exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
        batch_id = batch.id
        run_id = batch.run_id
    add_team(sessions, labelers=1)
    with running_server(create_app(settings(), sessions)) as url:
        for text in SQLI:  # login fields
            anonymous = httpx.Client(base_url=url)
            csrf = anonymous.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
            assert anonymous.post("/login", data={"name": text, "password": text, "csrf": csrf}).status_code == 401
        admin, labeler = Browserless(url, "admin"), Browserless(url, "lab0")
        for index, text in enumerate(SQLI):
            assert (
                admin.post(
                    "/admin/users", {"name": f"{text}{index}", "password": PASSWORD + text, "role": "labeler"}, "/admin"
                ).status_code
                == 303
            )
            assert admin.post(f"/admin/batches/{batch_id}/instructions", {"text": text}, "/admin").status_code == 303
            token = labeler.get("/label").text.split('name="token" value="')[1].split('"')[0]
            bad = labeler.post("/label/submit", {"token": token, "choice": text, "confidence": "5"})
            assert bad.status_code == 422 and "choice: expected a whole number" in bad.text
            assert (
                labeler.post(
                    "/label/submit", {"token": token, "choice": "0", "confidence": "5", "note": text}
                ).status_code
                == 303
            )
            assert labeler.post("/label/submit", {"token": text, "choice": "0", "confidence": "5"}).status_code == 404
        assert labeler.post(f"/runs/{run_id}/andon", {"reason": SQLI[1]}, "/runs").status_code == 303
        assert SQLI[1].replace("'", "&#39;") in labeler.get("/runs").text
        Browserless(url, f"{SQLI[0]}0", PASSWORD + SQLI[0])  # the odd name logs in as itself
    with sessions() as db:
        assert {"users", "judgments", "queries"} <= set(inspect(db.get_bind()).get_table_names())
        assert sorted(db.scalars(select(Judgment.note))) == sorted(SQLI)
        assert db.scalar(select(func.count(User.id))) == 3 + len(SQLI)  # admin, rita, lab0 and the odd names
