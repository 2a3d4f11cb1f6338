"""rlhf.eval.best_of_n_output: reading a run's best-of-N output (the SFT samples are each prompt's first candidate)."""

from __future__ import annotations

import pytest

from rlhf.data.io import write_jsonl
from rlhf.data.records import Sample
from rlhf.eval.best_of_n_output import read_best_of_n_output
from rlhf.run import RunDir


def write_bon_output(run: RunDir, prompts: list[str], n: int) -> None:
    candidates = [
        Sample(prompt=p, response=f"{p}-{k}", policy="sft", has_stop=k % 2 == 0, meta={"rm_score_no_penalty": float(k)})
        for p in prompts
        for k in range(n)
    ]
    chosen = [Sample(**{**c.to_dict(), "policy": f"bon{n}"}) for c in candidates[n - 1 :: n]]
    write_jsonl(run.stage("bon") / "candidates.jsonl", candidates)
    write_jsonl(run.stage("bon") / "samples.jsonl", chosen)
    run.mark_done("bon", {"n": n, "n_prompts": len(prompts), "kl_to_reference": 0.25})


def test_read_best_of_n_output_groups_the_candidates_by_prompt(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    write_bon_output(run, ["p", "q"], 3)
    bon = read_best_of_n_output(run, ["p", "q"])
    assert (bon.n, bon.kl_to_reference) == (3, 0.25)
    assert [s.response for s in bon.first_candidates()] == ["p-0", "q-0"]
    groups = [[s.response for s in group] for group in bon.candidate_groups()]
    assert groups == [["p-0", "p-1", "p-2"], ["q-0", "q-1", "q-2"]]
    assert [s.response for s in bon.chosen] == ["p-2", "q-2"]
    with pytest.raises(RuntimeError, match="drawn for other prompts"):
        read_best_of_n_output(run, ["q", "p"])
