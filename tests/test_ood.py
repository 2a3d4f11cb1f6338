"""Out-of-distribution evaluation (rlhf eval-ood): prompt selection and checks, and one end-to-end run on a tiny
random model (slow) that evaluates a smoke run's policies on IMDB-style prompts and on TL;DR prompts of one subreddit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import RunConfig
from rlhf.data.io import atomic_write_text
from rlhf.eval.ood import _check_out_dir, keeps_subreddit, ood_config, parse_subreddits, select_prompts
from rlhf.run import RunDir
from rlhf.tasks import evaluation_prompts

POSTS = [  # (subreddit, title, post)
    ("cats", "My cat", "Long time lurker, first time poster. My cat sleeps all day."),
    ("dogs", "My dog", "My dog barks at night and the neighbours complain."),
    ("Cats", "Kitten", "Our kitten climbs the curtains every morning."),
    ("relationships", "Help", "My girlfriend and I argue about money."),
]


def write_tldr_file(folder: Path) -> Path:
    rows = [
        {"id": f"p{i}", "subreddit": sub, "title": title, "post": post, "summary": "a summary"}
        for i, (sub, title, post) in enumerate(POSTS)
    ]
    path = folder / "tldr.jsonl"
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_parse_subreddits_and_filter() -> None:
    assert parse_subreddits("r/Cats, dogs,/r/AskReddit", "--subreddits") == ("cats", "dogs", "askreddit")
    with pytest.raises(ValueError, match="--exclude-subreddits: expected comma-separated"):
        parse_subreddits("cats,,dogs", "--exclude-subreddits")
    assert keeps_subreddit("Cats", ("cats",), ()) and keeps_subreddit("r/dogs", (), ("cats",))
    assert not keeps_subreddit("dogs", ("cats",), ()) and not keeps_subreddit("CATS", (), ("cats",))


def test_select_prompts_filters_subreddits_then_takes_n(tmp_path) -> None:
    cfg = RunConfig()
    cfg.task.name, cfg.task.source, cfg.task.n_eval_prompts = "tldr", str(write_tldr_file(tmp_path)), 2
    prompts = select_prompts(cfg, "test", include=("cats",))
    assert sorted(p.id for p in prompts) == ["p0", "p2"]  # "cats" and "Cats"
    assert {p.id for p in select_prompts(cfg, "test", exclude=("cats",))} == {"p1", "p3"}
    cfg.task.n_eval_prompts = 3
    with pytest.raises(ValueError, match=r"task.n_eval_prompts: expected 1..2"):
        select_prompts(cfg, "test", exclude=("cats",))
    cfg.task.n_eval_prompts = 4  # without a filter: the first n of the same seeded shuffle as `rlhf eval`
    assert [p.text for p in select_prompts(cfg, "test")] == evaluation_prompts(cfg)
    cfg.task.name, cfg.task.source = "sentiment", ""
    with pytest.raises(ValueError, match="only TL;DR prompts have a subreddit"):
        select_prompts(cfg, "test", include=("cats",))


def test_overrides_and_out_dir_are_checked(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no config"):
        ood_config(run, [])
    run.save_config(RunConfig())
    cfg = ood_config(run, ["task.name=tldr", "task.n_eval_prompts=5", "bon.n=3"])
    assert (cfg.task.name, cfg.task.n_eval_prompts, cfg.bon.n) == ("tldr", 5, 3)
    with pytest.raises(ValueError, match="eval-ood may change only"):
        ood_config(run, ["ppo.iterations=2"])
    for bad in (run.root, run.root / "eval", run.root / "bon" / "x"):
        with pytest.raises(ValueError, match="must not be the run directory"):
            _check_out_dir(run, bad)
    _check_out_dir(run, run.root / "ood-cats")  # a new folder inside the run is fine
    _check_out_dir(run, tmp_path / "elsewhere")


@pytest.mark.slow
def test_eval_ood_on_a_smoke_run(tiny_model_dir, tmp_path) -> None:
    from test_pipeline import SMOKE, rlhf

    out = tmp_path / "run"
    rlhf("run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}", "ppo.iterations=1")
    before = {
        path: path.read_bytes()
        for path in (out / "summary.json", out / "eval" / "samples.jsonl", out / "eval" / "done.json")
    }

    # another prompt source for the sentiment task: openings of IMDB-style reviews
    reviews = tmp_path / "reviews.jsonl"
    atomic_write_text(
        reviews,
        "".join(
            json.dumps(
                {
                    "text": f"Review {i}: this film was a long and strange ride through the "
                    f"city at night with friends {i}."
                }
            )
            + "\n"
            for i in range(6)
        ),
    )
    imdb = tmp_path / "ood-imdb"
    rlhf("eval-ood", str(out), "--out", str(imdb), f"task.source={reviews}", "task.n_eval_prompts=5")
    summary = json.loads((imdb / "summary.json").read_text())
    assert summary["prompts"]["n"] == 5 and summary["prompts"]["source"] == str(reviews)
    assert set(summary["policies"]) == {"initial", "sft", "ppo", "bon"}
    for name, figures in summary["policies"].items():
        for key in (
            "n",
            "gold_reward_mean",
            "gold_reward_sem",
            "rm_score_mean",
            "kl_to_reference",
            "response_length_mean",
            "no_stop_fraction",
            "distinct_1",
            "distinct_2",
        ):
            assert key in figures, (name, key)
        assert figures["n"] == 5 and "copying" not in figures
    assert set(summary["winrates"]) == {"ppo_vs_initial", "bon_vs_initial", "sft_vs_initial"}
    rows = [json.loads(line) for line in (imdb / "samples.jsonl").read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in reviews.read_text().splitlines()]
    assert len(rows) == 4 * 5 and all(any(text.startswith(r["prompt"]) for text in texts) for r in rows)

    # another task: TL;DR prompts of one subreddit, with the copying figures and no gold scorer
    tldr = tmp_path / "ood-tldr"
    rlhf(
        "eval-ood",
        str(out),
        "--out",
        str(tldr),
        "--subreddits",
        "r/cats",
        "task.name=tldr",
        f"task.source={write_tldr_file(tmp_path)}",
        "task.n_eval_prompts=2",
        "bon.n=2",
    )
    summary = json.loads((tldr / "summary.json").read_text())
    assert summary["prompts"]["subreddits"] == ["cats"] and sorted(summary["prompts"]["ids"]) == ["p0", "p2"]
    assert summary["trained_on"]["task"] == "sentiment" and summary["winrates"] == {}
    for figures in summary["policies"].values():
        assert "gold_reward_mean" not in figures and figures["n"] == 2
        assert {"copying", "first_three_copied", "first_three_n_with_preamble"} <= set(figures)
        assert figures["first_three_n_with_preamble"] <= 1  # only the "Long time lurker" post has a preamble

    # the run's own evaluation is untouched
    assert all(path.read_bytes() == content for path, content in before.items())
    bad = rlhf("eval-ood", str(out), "--out", str(out / "eval"), check=False)
    assert bad.returncode == 2 and "must not be the run directory" in bad.stderr
