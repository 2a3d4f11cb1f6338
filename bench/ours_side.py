"""Our side of bench/ppo_vs_trl.py: one measurement per process, run by it as

    python bench/ours_side.py {ppo,reward,sft,sample} SPEC.json RESULT.json
    python bench/ours_side.py ppo-run SPEC.json FOLDER      # once, before the PPO measurements

SPEC.json is what bench/ppo_vs_trl.py writes (model folder, threads, sizes, prompts, demonstrations, pairs);
RESULT.json gets the figures. Our stages run unchanged: their functions are wrapped from here to time them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import rlhf.stages.ppo as ppo_stage
import rlhf.stages.reward as reward_stage
import rlhf.stages.sft as sft_stage
from rlhf.config_loading import load_config
from rlhf.data.records import Comparison
from rlhf.models.encoding import encode_queries, tokenize_prompt_response
from rlhf.models.loading import base_model_path, open_backbone
from rlhf.models.provision import load_tokenizer
from rlhf.models.sampling import sample_tokens
from rlhf.pipeline import start_run
from rlhf.run import RunDir, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def our_config(spec: dict, overrides: list[str]):
    """The quickstart config (LoRA r16 on the top 8 layers) on the spec's model folder and threads."""
    base = [f"model.name_or_path={spec['model_dir']}", f"model.threads={spec['threads']}", "model.device=cpu"]
    return load_config(ROOT / "configs" / "quickstart.yaml", base + overrides)


def timed(record: list, fn):
    """`fn` that appends (start, seconds) of each call to `record`."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        record.append((t0, time.perf_counter() - t0))
        return out

    return wrapper


def counting(counts: list, fn):
    """`fn`, a function returning parameters, that appends how many it returned to `counts`."""

    def wrapper(*args, **kwargs):
        params = fn(*args, **kwargs)
        counts.append(sum(p.numel() for p in params))
        return params

    return wrapper


def ppo_config(spec: dict):
    """The quickstart config with the spec's PPO sizes, EOS the only stop."""
    s = spec["ppo"]
    return our_config(
        spec,
        [
            f"ppo.iterations={s['iterations']}",
            f"ppo.batch_size={s['episodes']}",
            f"ppo.minibatch_size={s['episodes']}",
            f"ppo.ppo_epochs={s['epochs']}",
            f"task.response_length={s['new_tokens']}",
            f"task.stop_min_tokens={s['new_tokens']}",  # stop strings never end a response: EOS only, as TRL
            "ppo.log_gold_reward=false",
        ],
    )


def ppo_run(spec: dict, folder: Path) -> None:
    """A run directory for our PPO stage (made once, outside the measured processes): SFT skipped (the policy is the
    model itself) and a reward model that is the model with a fresh adapter and a fresh scalar head (what TRL's
    side scores with)."""
    cfg = ppo_config(spec)
    run = RunDir(folder)
    start_run(run, cfg)
    run.mark_done("sft", {"trained": False})
    rm = reward_stage.new_reward_model(open_backbone(cfg, base_model_path(cfg)))
    rm.save(run.stage("reward"), "reward")
    run.mark_done("reward", {"note": "fresh adapter and head, untrained (bench/ours_side.py)"})


def ppo(spec: dict, work: Path) -> dict:
    """Our PPO stage on a copy of the run directory `ppo_run` made (spec["ppo"]["run"]); its rollout, score,
    compute_advantages and update are timed from here."""
    s, cfg = spec["ppo"], ppo_config(spec)
    run = RunDir(work / "run")
    shutil.copytree(s["run"], run.root)
    phases: dict[str, list] = {"generation": [], "score": [], "advantages": [], "update": [], "end": []}
    ppo_stage.rollout = timed(phases["generation"], ppo_stage.rollout)
    ppo_stage.score = timed(phases["score"], ppo_stage.score)
    ppo_stage.compute_advantages = timed(phases["advantages"], ppo_stage.compute_advantages)
    ppo_stage.update = timed(phases["update"], ppo_stage.update)
    ppo_stage.log_iteration = timed(phases["end"], ppo_stage.log_iteration)
    counts, optimizers = [], ppo_stage.optimizers

    def counted_optimizers(roles, pc):
        counts.append(sum(p.numel() for p in roles.policy_params + roles.value_params))
        return optimizers(roles, pc)

    ppo_stage.optimizers = counted_optimizers
    ppo_stage.train_ppo(run, cfg)
    rows = [json.loads(line) for line in (run.root / "ppo" / "metrics.jsonl").read_text().splitlines()]
    iterations = []
    for i in range(s["iterations"]):
        start, end = phases["generation"][i][0], sum(phases["end"][i])
        iterations.append(
            {
                "seconds": end - start,
                "generation": phases["generation"][i][1],
                "scoring": phases["score"][i][1] + phases["advantages"][i][1],
                "update": phases["update"][i][1],
                "response_length": rows[i]["response_length"],
            }
        )
    return {"iterations": iterations, "episodes": s["episodes"], "trainable": counts[0]}


def sft(spec: dict, work: Path) -> dict:
    """Our SFT stage on the spec's demonstrations (the task's own, loaded by the stage the same way); each
    optimiser step (`accumulated_step`) timed, with the tokens of its batch."""
    s = spec["sft"]
    cfg = our_config(spec, [f"sft.n_demonstrations={s['n']}", f"sft.batch_size={s['batch_size']}", "sft.epochs=1"])
    run = RunDir(work / "run")
    start_run(run, cfg)
    steps: list = []
    tokens: list[int] = []
    tokenizer = load_tokenizer(base_model_path(cfg))

    def step(batch, *args, **kwargs):
        rows = tokenize_prompt_response(tokenizer, [d.prompt for d in batch], [d.response for d in batch], True)
        tokens.append(sum(len(q) + len(a) for q, a in rows))
        return timed(steps, original)(batch, *args, **kwargs)

    original, counts = sft_stage.accumulated_step, []
    sft_stage.accumulated_step = step
    sft_stage.trainable_parameters = counting(counts, sft_stage.trainable_parameters)
    info = sft_stage.train_sft(run, cfg)
    assert info["n_train"] == len(spec["demos"]), (info, len(spec["demos"]))
    seconds = [t for _, t in steps]
    return {"step_seconds": seconds, "step_tokens": tokens, "train_seconds": sum(seconds), "trainable": counts[0]}


def reward(spec: dict, work: Path) -> dict:
    """Our reward model's training (`fit_reward_model`, the reward stage's: the frozen bottom layers once, then the
    steps) on the spec's pairs, with the reward config's defaults otherwise; its steps timed too."""
    s = spec["reward"]
    cfg = our_config(spec, [f"reward.epochs={s['epochs']}", f"reward.batch_size={s['batch_size']}"])
    seed_everything(cfg.seed + 2)
    rc = cfg.reward
    rc.probe_head_first, rc.learning_rate, rc.head_learning_rate = False, 3e-4, 0.0  # RewardConfig's defaults
    train = [Comparison(prompt=p, responses=[c, r], kind="pairwise", best=0) for p, c, r in spec["pairs"]]
    rm = reward_stage.new_reward_model(open_backbone(cfg, base_model_path(cfg)))
    steps: list = []
    reward_stage.accumulated_step = timed(steps, reward_stage.accumulated_step)
    t0 = time.perf_counter()
    n_steps = reward_stage.fit_reward_model(rm, train, rc, cfg.seed)
    seconds = time.perf_counter() - t0
    n_trainable = sum(
        p.numel() for p in reward_stage.trainable_parameters(rm.backbone, rm.adapter) + list(rm.head.parameters())
    )
    return {"train_seconds": seconds, "steps": n_steps, "step_seconds": [t for _, t in steps], "trainable": n_trainable}


def matmul_flops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of torch.matmul on two n x n float32 matrices (best of `repeats`)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(timed_call(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def timed_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sample(spec: dict, work: Path) -> dict:
    """New tokens/s of our sampler (`sample_tokens`, every row sampling every token) and of `model.generate`
    (min_new_tokens = max_new_tokens, sampling at the same temperature, no top-k/top-p) on the same prompts, at
    each batch size; and the matmul rate this process reaches."""
    s = spec["sample"]
    cfg = our_config(spec, [])
    backbone = open_backbone(cfg, base_model_path(cfg))
    tok, T, n = backbone.tokenizer, cfg.task.temperature, s["new_tokens"]
    lm = backbone.causal_lm()
    n_params = sum(p.numel() for p in lm.parameters())
    prompts = spec["prompts"]
    out: dict = {"n_params": n_params, "new_tokens": n, "rates": {}}
    for batch in s["batches"]:
        rows = (prompts * (batch // len(prompts) + 1))[:batch]
        query_ids, query_mask = encode_queries(tok, rows)

        def ours(k: int) -> None:
            with backbone.use(None) as m:
                tokens, _, _ = sample_tokens(m, query_ids, query_mask, k, T, None)
            assert tokens.shape == (batch, k), tokens.shape

        @torch.no_grad()
        def generate(k: int) -> None:
            ids = lm.generate(
                input_ids=query_ids,
                attention_mask=query_mask,
                do_sample=True,
                temperature=T,
                top_k=0,
                top_p=1.0,
                max_new_tokens=k,
                min_new_tokens=k,
                pad_token_id=tok.pad_token_id,
            )
            assert ids.shape == (batch, query_ids.shape[1] + k), ids.shape

        for name, fn in (("ours", ours), ("generate", generate)):
            fn(2)  # warm-up
            seconds = [timed_call(lambda: fn(n)) for _ in range(s["repeats"])]
            out["rates"][f"{name}@{batch}"] = batch * n / statistics.median(seconds)
    out["matmul_flops"] = matmul_flops(spec["threads"])
    return out


PARTS = {"ppo": ppo, "sft": sft, "reward": reward, "sample": sample}


def main(argv: list[str]) -> None:
    part, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    if part == "ppo-run":  # not a measurement: the run directory the PPO measurements copy
        ppo_run(spec, Path(result_path))
        return
    with tempfile.TemporaryDirectory(prefix=f"ours_{part}_") as work:
        result = PARTS[part](spec, Path(work))
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
