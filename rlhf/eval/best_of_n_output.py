"""RUN_DIR/bon, the best-of-N stage's output, as the evaluation reads it: each prompt's N candidates (i.i.d. samples
of the SFT policy, scored by the reward model) and the chosen one. The SFT policy's figures are taken from each
prompt's first candidate instead of sampling the SFT policy again."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.data.io import read_jsonl
from rlhf.data.records import Sample
from rlhf.run import RunDir


@dataclass(frozen=True)
class BestOfNOutput:
    n: int
    kl_to_reference: float
    candidates: list[Sample]
    """N per prompt, in prompt order."""
    chosen: list[Sample]
    """The highest-scoring candidate of each prompt."""

    def first_candidates(self) -> list[Sample]:
        """One plain sample of the SFT policy per prompt."""
        return self.candidates[:: self.n]

    def candidate_groups(self) -> list[list[Sample]]:
        """Each prompt's N candidates."""
        return [self.candidates[i : i + self.n] for i in range(0, len(self.candidates), self.n)]


def read_best_of_n_output(run: RunDir, prompts: list[str]) -> BestOfNOutput:
    """The run's best-of-N candidates and choices, checked to have been drawn for `prompts`, in this order."""
    info = run.done_info("bon")
    candidates = read_jsonl(run.root / "bon" / "candidates.jsonl", Sample)
    chosen = read_jsonl(run.root / "bon" / "samples.jsonl", Sample)
    output = BestOfNOutput(info["n"], info["kl_to_reference"], candidates, chosen)
    if [s.prompt for s in output.first_candidates()] != prompts or [s.prompt for s in chosen] != prompts:
        raise RuntimeError(
            f"{run.root / 'bon'}: best-of-N was drawn for other prompts than the held-out ones; remove it and re-run"
        )
    return output
