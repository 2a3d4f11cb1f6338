"""The reward-model stage on a tiny model: mixed query types in one batch, tied-best filtering (the export as a transformers classifier: tests/test_export.py)."""

from __future__ import annotations

import torch

from rlhf.data.records import Comparison
from rlhf.losses import best_of_k_loss, pairwise_loss, ranking_loss
from rlhf.models.encoding import ScoringInputs, pad_prompt_response
from rlhf.models.provision import load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, ScalarRole
from rlhf.stages.reward import comparison_loss, encode_comparisons, has_tied_best, prompts_and_responses


def raw_scores_of_texts(rm: ScalarRole, prompts: list[str], responses: list[str]) -> torch.Tensor:
    ids, mask, _ = pad_prompt_response(rm.tokenize(prompts, responses), rm.backbone.tokenizer.pad_token_id)
    return rm.raw_scores(ScoringInputs(ids, mask))


def make_rm(tiny_model_dir, top_layers=0):
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(
        load_causal_lm(str(tiny_model_dir), tok),
        tok,
        lora_r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        top_layers=top_layers,
    )
    bb.add_adapter("reward")
    torch.manual_seed(1)
    for p in bb.adapter_parameters("reward"):
        p.data.normal_(0, 0.5)
    return ScalarRole(bb, "reward")


def test_mixed_batch_loss_weights_each_kind_by_its_count(tiny_model_dir):
    rm = make_rm(tiny_model_dir)
    pair = Comparison(prompt="A film", responses=[" good.", " bad."], kind="pairwise", best=1)
    bok = Comparison(prompt="B film", responses=[" a", " b", " c", " d"], kind="best_of_k", best=2)
    rank = Comparison(prompt="C film", responses=[" w", " x", " y", " z"], kind="ranking", ranks=[1, 0, 3, 2])
    flat = encode_comparisons(rm, [pair, bok, rank])
    with torch.no_grad():
        loss = comparison_loss(rm, [pair, bok, rank], [flat[:2], flat[2:6], flat[6:]])
        r_pair = raw_scores_of_texts(rm, ["A film"] * 2, pair.responses)
        r_bok = raw_scores_of_texts(rm, ["B film"] * 4, bok.responses)
        r_rank = raw_scores_of_texts(rm, ["C film"] * 4, rank.responses)
    expected = (
        pairwise_loss(r_pair[1:2], r_pair[0:1])
        + best_of_k_loss(r_bok[None], torch.tensor([2]))
        + ranking_loss(r_rank[None], torch.tensor([[1, 0, 3, 2]]))
    ) / 3
    assert torch.allclose(loss, expected, atol=1e-5)


def test_cached_encoding_gives_the_same_loss_and_gradients_reach_the_top_layers(tiny_model_dir):
    rm = make_rm(tiny_model_dir, top_layers=1)
    batch = [
        Comparison(prompt="A film", responses=[" good.", " bad and long"], kind="pairwise", best=0),
        Comparison(prompt="Another, longer film", responses=[" a", " b", " c", " d"], kind="best_of_k", best=3),
    ]
    encoded = encode_comparisons(rm, batch)
    assert all(s.prefix is not None for s in encoded)  # the frozen bottom layers ran once, here
    with torch.no_grad():
        r = raw_scores_of_texts(rm, *prompts_and_responses(batch))
    direct = (pairwise_loss(r[0:1], r[1:2]) + best_of_k_loss(r[None, 2:], torch.tensor([3]))) / 2
    rm.backbone.mark_trainable("reward")
    cached = comparison_loss(rm, batch, [encoded[:2], encoded[2:]])
    assert torch.allclose(direct, cached, atol=1e-5)
    cached.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rm.backbone.adapter_parameters("reward"))
    assert rm.head.weight.grad is not None


def test_tied_best_is_detected_from_gold():
    tied = Comparison(
        prompt="p", responses=["a", "b", "c", "d"], kind="best_of_k", best=0, meta={"gold": [0.5, 0.5, 0.1, 0.0]}
    )
    clear = Comparison(
        prompt="p", responses=["a", "b", "c", "d"], kind="best_of_k", best=0, meta={"gold": [0.6, 0.5, 0.5, 0.0]}
    )
    assert has_tied_best(tied) and not has_tied_best(clear)


def test_head_fitted_on_frozen_features_ranks_the_training_comparisons(tiny_model_dir):
    """LP-FT's first step: a head fitted by L-BFGS on the trunk's features lowers the comparison loss from its
    random start and puts the chosen response first on a learnable toy set (the word "great" is always chosen)."""
    from rlhf.stages.reward import fit_head_on_frozen_features, loss_from_scores

    rm = make_rm(tiny_model_dir, top_layers=1)
    words = [" dull", " fine", " slow", " odd", " long", " late", " cold", " grey"]
    train = []
    for i in range(12):
        responses = [f" it was{words[(i + j) % 8]}" for j in range(4)]
        best = i % 4
        responses[best] = " it was great"
        train.append(Comparison(prompt=f"Film {i}:", responses=responses, kind="best_of_k", best=best))
    flat = encode_comparisons(rm, train)
    encoded = [flat[4 * i : 4 * i + 4] for i in range(len(train))]
    with torch.no_grad():
        before = comparison_loss(rm, train, encoded).item()
    fit_head_on_frozen_features(rm, train, encoded, l2=0.01)
    with torch.no_grad():
        after = comparison_loss(rm, train, encoded).item()
        scores = torch.stack([raw_scores_of_texts(rm, [c.prompt] * 4, c.responses) for c in train])
    assert after < before and after < 0.5 * 1.386, (before, after)  # log 4 = 1.386 is chance
    assert (scores.argmax(-1) == torch.tensor([c.best for c in train])).all()
    assert torch.allclose(loss_from_scores(scores.flatten(), train), torch.tensor(after), atol=1e-4)
