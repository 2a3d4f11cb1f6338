"""A real browser (Playwright driving Debian's chromium, headless) against the real server on 127.0.0.1:
login and role routing, every query type by mouse and by keyboard, a failed qualification blocking a
labeler, and overlap reaching the configured number of distinct labelers. Screenshots of each query page
are written to $RLHF_SCREENSHOT_DIR when it is set (docs/screenshots/ was made that way)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from label_helpers import PASSWORD, running_server, write_gold, write_samples
from sqlalchemy import func, select

from rlhf.data.io import write_jsonl
from rlhf.data.records import Sample
from rlhf.labeling_app import exchange
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import Judgment

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def sessions(tmp_path):
    return open_database(f"sqlite:///{tmp_path / 'label.db'}")


def team(sessions, *names: str, role: str = "labeler") -> None:
    with sessions() as db:
        for name in names:
            create_user(db, name, PASSWORD, role)


def login(browser, url: str, name: str):
    page = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
    page.goto(url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    return page


def position_of(page, text: str) -> int:
    """Where the response with ``text`` is shown on the page (the order is random per assignment)."""
    shown = page.locator(".response pre").all_inner_texts()
    return next(index for index, value in enumerate(shown) if value.strip() == text)


def stored_answers(sessions) -> list[dict]:
    with sessions() as db:
        return [judgment.answer for judgment in db.scalars(select(Judgment).order_by(Judgment.id))]


def test_login_routes_roles_and_refuses_other_roles_pages(browser, sessions):
    team(sessions, "lab")
    team(sessions, "boss", role="admin")
    with running_server(create_app(LabelSettings(secret_key="k"), sessions)) as url:
        page = login(browser, url, "lab")
        assert page.url.endswith("/label") and "No work right now" in page.content()
        assert page.goto(url + "/admin").status == 403
        admin = login(browser, url, "boss")
        assert admin.url.endswith("/admin") and admin.locator("#users").inner_text().count("labeler") == 1
        wrong = browser.new_page()
        wrong.goto(url + "/login")
        wrong.fill("input[name=name]", "lab")
        wrong.fill("input[name=password]", "not the password")
        wrong.click("button[type=submit]")
        assert "wrong name or password" in wrong.content() and wrong.url.endswith("/login")


POST = (
    "SUBREDDIT: r/cooking\nTITLE: My sourdough never rises, what am I doing wrong?\n"
    "POST: I feed my starter every day and it bubbles, but after the overnight proof the dough is flat and dense. "
    "The kitchen is cold in winter (about 16 C). I use 70% hydration and bake at 240 C.\nTL;DR:"
)
SUMMARIES = [
    " My sourdough comes out flat and dense even though my starter is active; my kitchen is cold.",
    " Sourdough doesn't rise. Help?",
    " I bake bread.",
    " Starter bubbles but the overnight proof leaves the dough flat, probably because the kitchen is about 16 C.",
    " My kitchen is cold in winter.",
    " Dense sourdough, active starter, cold kitchen: what should I change?",
    " I use 70% hydration and bake at 240 C.",
    " Flat loaves.",
    " My starter is fine but my bread is not.",
]


def write_story_samples(run_dir: Path, per_prompt: int) -> list[str]:
    """One readable TL;DR-style prompt with ``per_prompt`` candidate summaries (made up for these tests)."""
    responses = SUMMARIES[:per_prompt]
    write_jsonl(
        run_dir / "collect" / "samples.jsonl",
        [Sample(prompt=POST, response=r, policy=f"policy-{i}") for i, r in enumerate(responses)],
    )
    return [r.strip() for r in responses]


def answer_by_mouse(page, kind: str, target: str, count: int) -> None:
    if kind in ("pairwise", "best_of_k"):
        page.locator(
            ".response", has=page.locator("pre", has_text=re.compile(r"^\s*" + re.escape(target) + r"\s*$"))
        ).click()
        if kind == "pairwise":
            page.click("input[name=confidence][value='8']")
    elif kind == "ranking":
        for position in range(count):
            page.fill(f"input[name=rank_{position}]", "1" if position == position_of(page, target) else "2")
    else:
        for axis, value in (("overall", 6), ("accuracy", 5), ("coverage", 4), ("coherence", 7)):
            page.click(f"input[name={axis}][value='{value}']")
        page.click("input[name=flags][value=incomplete]")
    page.click("#submit")


def answer_by_keyboard(page, kind: str, target: str, count: int) -> None:
    if kind == "pairwise":
        page.keyboard.press("ab"[position_of(page, target)])
        page.keyboard.press("8")
    elif kind == "best_of_k":
        page.keyboard.press(str(position_of(page, target) + 1))
    elif kind == "ranking":  # focus starts in the first rank box; type a rank, Tab to the next
        for position in range(count):
            page.keyboard.type("1" if position == position_of(page, target) else "2")
            if position < count - 1:
                page.keyboard.press("Tab")
    else:  # focus starts on the first Likert row; a digit sets it and moves on; Tab to the flags, Space ticks
        for key in "6547":
            page.keyboard.press(key)
        page.keyboard.press("Tab")
        for _ in range(3):
            page.keyboard.press("Tab")
        page.keyboard.press(" ")
    page.keyboard.press("Enter")


@pytest.mark.parametrize("kind, per_prompt", [("pairwise", 2), ("best_of_k", 4), ("ranking", 5), ("likert", 1)])
@pytest.mark.parametrize("how", ["mouse", "keyboard"])
def test_each_query_type_can_be_answered(browser, sessions, tmp_path, kind, per_prompt, how):
    responses = write_story_samples(tmp_path / "run", per_prompt)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", kind, overlap_share=0.0)
    team(sessions, "lab")
    best = per_prompt - 1
    with running_server(create_app(LabelSettings(secret_key="k", gold_rate=0.0), sessions)) as url:
        page = login(browser, url, "lab")
        assert page.locator("form#answer").get_attribute("data-kind") == kind
        assert "policy-" not in page.content()
        if how == "mouse":
            shot = tmp_path / f"{kind}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("RLHF_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(os.environ["RLHF_SCREENSHOT_DIR"]) / f"query_{kind}.png")
            answer_by_mouse(page, kind, responses[best], per_prompt)
        else:
            answer_by_keyboard(page, kind, responses[best], per_prompt)
        page.wait_for_selector("#status[data-status=empty]")
    (answer,) = stored_answers(sessions)
    expected = {
        "pairwise": {"best": best, "confidence": 8},
        "best_of_k": {"best": best},
        "ranking": {"ranks": [1] * (per_prompt - 1) + [0]},
        "likert": {"overall": 6, "accuracy": 5, "coverage": 4, "coherence": 7, "flags": ["incomplete"]},
    }[kind]
    assert answer == expected


def test_a_failed_qualification_blocks_the_labeler(browser, sessions, tmp_path):
    with sessions() as db:
        exchange.push_gold(db, write_gold(tmp_path / "qual.jsonl", 3), "qualification", qualification=True)
    write_samples(tmp_path / "run", prompts=2, per_prompt=4)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=0.0)
    team(sessions, "careless", "careful")
    with running_server(create_app(LabelSettings(secret_key="k", gold_rate=0.0), sessions)) as url:
        for name, pick in (("careless", "bad answer"), ("careful", "GOOD answer")):
            page = login(browser, url, name)
            for number in range(3):
                assert page.locator(".prompt pre").inner_text() == f"gold {number}"
                page.locator(".response", has_text=pick).first.click()
                with page.expect_navigation():
                    page.click("#submit")
            status = (
                page.locator("#status").get_attribute("data-status") if page.locator("#status").count() else "working"
            )
            if name == "careless":
                assert status == "failed_qualification" and "Qualification not passed" in page.content()
                page.goto(url + "/label")  # coming back does not help
                assert page.locator("#status").get_attribute("data-status") == "failed_qualification"
            else:
                assert status == "working" and page.locator("form#answer").get_attribute("data-kind") == "best_of_k"


def test_overlap_reaches_the_configured_number_of_distinct_labelers(browser, sessions, tmp_path):
    write_samples(tmp_path / "run", prompts=1, per_prompt=4)
    with sessions() as db:
        exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=1.0, overlap_labelers=3)
    names = ["ann", "ben", "cat", "dan"]
    team(sessions, *names)
    with running_server(create_app(LabelSettings(secret_key="k", gold_rate=0.0), sessions)) as url:
        pages = [login(browser, url, name) for name in names]
        assert [page.locator("form#answer").count() for page in pages] == [1, 1, 1, 0]  # three slots, three labelers
        for page in pages[:3]:
            page.keyboard.press("1")
            page.keyboard.press("Enter")
            page.wait_for_selector("#status[data-status=empty]")  # never the same query twice
        pages[3].reload()
        assert "No work right now" in pages[3].content()
    with sessions() as db:
        assert db.scalar(select(func.count(func.distinct(Judgment.user_id)))) == 3
