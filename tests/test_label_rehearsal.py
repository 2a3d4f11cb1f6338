"""A whole collection round rehearsed with simulated labelers registered as app users, then the Andon
cord pulled in a real browser stopping a running PPO stage (tiny random model): sample -> push -> label
over HTTP -> pull -> reward model on the pulled comparisons -> PPO -> cord -> checkpoint and stop ->
who/why shown until a researcher releases it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from label_helpers import PASSWORD, running_server
from test_label_browser import CHROMIUM, CHROMIUM_ARGS, login

from rlhf.data.io import read_jsonl
from rlhf.data.records import Comparison
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.labeling_app import exchange
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.simulated_client import AppLabelerClient, label_through_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_simulated_round_then_andon_cord_stops_running_ppo(tiny_model_dir, tmp_path, monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    from rlhf.config_loading import config_from_dict, config_to_dict, load_config
    from rlhf.pipeline import run_stage, start_run
    from rlhf.run import RunDir
    from rlhf.tasks import get_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = RunDir(tmp_path / "run")
    cfg = load_config(
        ROOT / "configs" / "smoke.yaml",
        [
            f"model.name_or_path={tiny_model_dir}",
            "sft.n_demonstrations=0",
            "collect.kind=best_of_k",
            "ppo.iterations=500",
        ],
    )
    start_run(run, cfg)
    run_stage(run, cfg, "sft")
    run_stage(run, cfg, "collect")  # samples K=4 responses per prompt from the policy (RUN_DIR/collect/samples.jsonl)

    sessions = open_database(f"sqlite:///{tmp_path / 'label.db'}")
    with sessions() as db:
        batch = exchange.push_samples(db, run.root, "best_of_k", overlap_share=0.2, overlap_labelers=3)
        run_id = batch.run_id
        for index in range(3):
            create_user(db, f"sim{index}", PASSWORD, "labeler", simulated="sentiment T=0.5")
        create_user(db, "lab", PASSWORD, "labeler")
        create_user(db, "rita", PASSWORD, "researcher")
    gold = get_task("sentiment").gold_scorer
    with running_server(create_app(LabelSettings(secret_key="k", gold_rate=0.0), sessions)) as url:
        clients = [AppLabelerClient(url, f"sim{index}", PASSWORD) for index in range(3)]
        with ThreadPoolExecutor(3) as pool:
            answered = list(
                pool.map(
                    lambda c: len(label_through_app(c, SimulatedLabeler(gold, 0.5, seed=int(c.name[-1]), name=c.name))),
                    clients,
                )
            )
        assert sum(answered) == 8 + 2 * 3  # 10 prompts, 2 of them answered by 3 labelers
        with sessions() as db:
            exchange.pull_answers(db, tmp_path / "pulled")
        pulled = read_jsonl(tmp_path / "pulled" / "comparisons.jsonl", Comparison)
        assert len(pulled) == 14 and {c.labeler for c in pulled} == {"sim0", "sim1", "sim2"}

        # the reward stage trains on the pulled comparisons (collect.comparisons_path), then PPO starts
        data = config_to_dict(cfg)
        data["collect"]["comparisons_path"] = str(tmp_path / "pulled" / "comparisons.jsonl")
        cfg = config_from_dict(data)
        run.save_config(cfg)
        assert run_stage(run, cfg, "collect", force=True)["n_train"] + run.done_info("collect")["n_heldout"] == 14
        run_stage(run, cfg, "reward")
        result: dict = {}
        ppo = threading.Thread(target=lambda: result.update(run_stage(run, cfg, "ppo")))
        ppo.start()
        metrics = run.root / "ppo" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().strip()):
            assert ppo.is_alive() and time.monotonic() < deadline, "PPO did not start iterating"
            time.sleep(0.5)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = login(browser, url, "lab")
            page.goto(url + "/runs")
            page.fill(f"#run-{run_id} input[name=reason]", "every response is the same word")
            page.click(f"#run-{run_id} button[type=submit]")
            page.wait_for_selector(".andon")
            ppo.join(timeout=300)
            assert not ppo.is_alive()
            assert result["stopped"] and result["reason"] == "Andon cord pulled by lab: every response is the same word"
            assert (run.root / "ppo" / "checkpoint.pt").exists() and not run.is_done("ppo")
            banner = page.locator(".andon").inner_text()
            assert "stopped by lab" in banner and "every response is the same word" in banner
            assert page.locator("button", has_text="Release").count() == 0  # labelers cannot release
            researcher = login(browser, url, "rita")
            assert "stopped by lab" in researcher.locator(".andon").inner_text()  # shown on every page until released
            researcher.goto(url + "/runs")
            researcher.click("button:has-text('Release')")
            researcher.wait_for_selector(f"#run-{run_id} .running")
            assert researcher.locator(".andon").count() == 0 and not (run.root / "ANDON").exists()
            browser.close()
    assert yaml.safe_load((run.root / "config.yaml").read_text())["ppo"]["stop_file"] == ""
