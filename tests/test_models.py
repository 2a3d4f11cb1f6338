"""Model roles on a tiny random Llama: padding invariance, truncation at the stop rule, temperature, adapters."""

from __future__ import annotations

import pytest
import torch

from rlhf.models.encoding import ScoringInputs, encode_queries, pad_encoded, pad_prompt_response
from rlhf.models.provision import ModelNotAvailable, from_pretrained, load_causal_lm, load_tokenizer
from rlhf.models.roles import (
    Backbone,
    Episodes,
    LanguageModelRole,
    ScalarRole,
    encode_for_scoring,
    position_ids_from_mask,
)
from rlhf.models.sampling import PrefixReuse, StopRule, prefix_reuse, sample_episodes


def raw_scores_of_texts(rm: ScalarRole, prompts: list[str], responses: list[str], padding_side: str = "left"):
    """The reward model's raw scores of (prompt, response) pairs laid out as `ScalarRole.tokenize` does, one batch."""
    pairs = rm.tokenize(prompts, responses)
    ids, mask, _ = pad_prompt_response(pairs, rm.backbone.tokenizer.pad_token_id, padding_side)
    return rm.raw_scores(ScoringInputs(ids, mask))


@pytest.fixture()
def backbone(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(
        load_causal_lm(str(tiny_model_dir), tok), tok, lora_r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    bb.add_adapter("reward")
    bb.add_adapter("policy")
    torch.manual_seed(0)
    for name in ("reward", "policy"):  # LoRA B starts at 0: give the adapters weight so they change the output
        for p in bb.adapter_parameters(name):
            p.data.normal_(0, 0.5)
    return bb


def test_pad_token_differs_from_eos(backbone):
    assert backbone.tokenizer.pad_token_id != backbone.tokenizer.eos_token_id


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_reward_score_same_for_left_and_right_padding_and_any_batch(backbone):
    rm = ScalarRole(backbone, "reward")
    prompts = ["The film opened with", "I rented this movie on a rainy Sunday and by the end I", "Plot:"]
    responses = [" a long shot of the sea.", " loved it.", " a mess from start to finish, honestly"]
    with torch.no_grad():
        alone = torch.stack([raw_scores_of_texts(rm, [p], [r])[0] for p, r in zip(prompts, responses)])
        left = raw_scores_of_texts(rm, prompts, responses, padding_side="left")
        right = raw_scores_of_texts(rm, prompts, responses, padding_side="right")
        pair = raw_scores_of_texts(rm, prompts[:2], responses[:2], padding_side="left")
    assert torch.allclose(alone, left, atol=1e-5), (alone, left)
    assert torch.allclose(alone, right, atol=1e-5), (alone, right)
    assert torch.allclose(alone[:2], pair, atol=1e-5)
    assert len(set(torch.round(alone, decimals=4).tolist())) == 3  # the scores do depend on the text


def test_logprobs_do_not_depend_on_left_padding(backbone):
    policy = LanguageModelRole(backbone, "policy", temperature=0.7)
    tok = backbone.tokenizer
    prompts = ["A short one", "A much longer opening sentence for this review that"]
    q, qm = encode_queries(tok, prompts)
    resp = torch.tensor([tok(" was fine and good").input_ids[:3], tok(" made me smile a lot").input_ids[:3]])
    batch = Episodes(q, qm, resp, torch.ones(2, 3), torch.ones(2, dtype=torch.bool))
    with torch.no_grad():
        together = policy.logprobs(batch)
        q0, qm0 = encode_queries(tok, prompts[:1])
        alone = policy.logprobs(Episodes(q0, qm0, resp[:1], torch.ones(1, 3), torch.ones(1, dtype=torch.bool)))
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_temperature_divides_the_logits(backbone):
    tok = backbone.tokenizer
    q, qm = encode_queries(tok, ["Hello there"])
    ep = Episodes(q, qm, torch.tensor([[100, 200]]), torch.ones(1, 2), torch.ones(1, dtype=torch.bool))
    with torch.no_grad():
        hot = LanguageModelRole(backbone, "policy", 1.0).logits(ep)
        cold = LanguageModelRole(backbone, "policy", 0.5).logits(ep)
    assert torch.allclose(cold, hot * 2, atol=1e-5)


def test_logprobs_and_entropy_at_real_positions_only_equal_the_full_computation(backbone):
    from rlhf.losses import entropy_from_logits, logprobs_from_logits

    tok = backbone.tokenizer
    q, qm = encode_queries(tok, ["Hello there", "A longer opening of a review"])
    response = torch.tensor([[100, 200, 300, 7], [400, 500, 7, 7]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    ep = Episodes(q, qm, response, mask, torch.ones(2, dtype=torch.bool))
    backbone.mark_trainable("policy")
    policy = LanguageModelRole(backbone, "policy", 0.7)
    logprobs, entropy = policy.logprobs(ep, with_entropy=True)
    with torch.no_grad():
        logits = policy.logits(ep)  # every position, padding included
        full_logprobs, full_entropy = logprobs_from_logits(logits, response), entropy_from_logits(logits)
    real = mask.bool()
    assert torch.allclose(logprobs[real], full_logprobs[real], atol=1e-5)
    assert torch.allclose(entropy[real], full_entropy[real], atol=1e-4)
    assert logprobs[~real].eq(0).all() and entropy[~real].eq(0).all()
    logprobs.sum().backward()  # gradients reach the adapter through the real positions
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.adapter_parameters("policy"))


def test_reference_is_base_with_adapters_off(backbone):
    tok = backbone.tokenizer
    q, qm = encode_queries(tok, ["Hello there"])
    ep = Episodes(q, qm, torch.tensor([[100, 200]]), torch.ones(1, 2), torch.ones(1, dtype=torch.bool))
    with torch.no_grad():
        ref = LanguageModelRole(backbone, None, 1.0).logprobs(ep)
        pol = LanguageModelRole(backbone, "policy", 1.0).logprobs(ep)
    assert not torch.allclose(ref, pol)


def test_stop_rule_truncates_after_first_stop_at_or_after_min_tokens(backbone):
    tok = backbone.tokenizer
    rule = StopRule(tok, (".",), min_tokens=2)
    dot = tok(".").input_ids[0]
    word = tok(" word").input_ids[0]
    eos = tok.eos_token_id
    ids = torch.tensor(
        [
            [word, dot, word, dot, word, word],  # the dot at index 1 is too early; the one at index 3 stops
            [word, eos, word, dot, word, word],  # EOS stops at any index
            [word, word, word, word, word, word],  # no stop: full length, has_stop False
        ]
    )
    mask, has_stop = rule.apply(ids)
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert has_stop.tolist() == [True, True, False]


def test_sampling_is_fixed_length_then_padded_after_stop(backbone):
    policy = LanguageModelRole(backbone, "policy", temperature=1.0)
    rule = StopRule(backbone.tokenizer, (".",), min_tokens=0)
    torch.manual_seed(0)
    episodes, texts = sample_episodes(policy, ["One", "Two three"], 6, rule)
    assert episodes.response_ids.shape == (2, 6)
    assert episodes.prefix is None and episodes.scoring is None  # nothing kept unless asked for
    pad = backbone.tokenizer.pad_token_id
    assert bool(((episodes.response_ids == pad) == (episodes.response_mask == 0)).all())
    assert len(texts) == 2


def test_hub_id_without_network_gives_clear_error(monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="Hugging Face hub"):
        from_pretrained(AutoTokenizer, "no-such-org/no-such-model-rlhf-test")


def top_layer_backbone(tiny_model_dir, adapter: str) -> Backbone:
    """A backbone whose one adapter sits on the top layer only, with weights that change the output."""
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(
        load_causal_lm(str(tiny_model_dir), tok),
        tok,
        lora_r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        top_layers=1,
    )
    bb.add_adapter(adapter)
    for p in bb.adapter_parameters(adapter):
        p.data.normal_(0, 0.5)
    return bb


def test_frozen_prefix_then_top_layers_equals_full_forward(tiny_model_dir):
    bb = top_layer_backbone(tiny_model_dir, "policy")
    tok = bb.tokenizer
    assert bb.shares_frozen_prefix
    ids, mask = encode_queries(tok, ["a short one", "a much longer prompt with several more words"])
    prefix = bb.frozen_prefix(ids, mask)
    for adapter in ("policy", None):
        with torch.no_grad():
            full = bb.hidden_states(adapter, ids, mask)
            split = bb.hidden_states(adapter, ids, mask, prefix)
        real = mask.bool()
        assert torch.allclose(full[real], split[real], atol=1e-5)
    assert len(bb.causal_lm().model.layers) == 2  # the layers were put back


def test_reward_scores_from_cached_prefix_equal_direct_scores(tiny_model_dir):
    bb = top_layer_backbone(tiny_model_dir, "reward")
    tok = bb.tokenizer
    rm = ScalarRole(bb, "reward")
    prompts, responses = ["A film", "Another much longer opening for a film that"], [" was good.", " bored me"]
    encoded = encode_for_scoring(rm, prompts, responses)
    assert all(s.prefix is not None for s in encoded)
    with torch.no_grad():
        direct = raw_scores_of_texts(rm, prompts, responses)
        cached = rm.raw_scores(pad_encoded(encoded, tok.pad_token_id))
    assert torch.allclose(direct, cached, atol=1e-5)
    rm.gain, rm.bias = 2.0, -1.0  # scoring the encoded sequences normalises as scoring the texts does
    assert torch.allclose(rm.score(prompts, responses, encoded=encoded), direct * 2.0 - 1.0, atol=1e-5)
    assert torch.allclose(rm.score(prompts, responses), direct * 2.0 - 1.0, atol=1e-5)


def test_scores_in_length_sorted_batches_come_back_in_input_order(tiny_model_dir, monkeypatch):
    from rlhf.models.encoding import length_sorted_batches

    assert length_sorted_batches([5, 2, 9, 2, 7], 2) == [[1, 3], [0, 4], [2]]
    bb = top_layer_backbone(tiny_model_dir, "reward")
    rm = ScalarRole(bb, "reward")
    rm.gain, rm.bias = 1.5, 0.25
    prompts = ["A much longer opening for a film that", "A film", "Plot:", "I rented this on a rainy Sunday and", "It"]
    responses = [
        " bored me from the first minute to the last",
        " was good.",
        " none",
        " by the end I",
        " was fine, I guess, for a while",
    ]
    with torch.no_grad():
        alone = torch.stack([raw_scores_of_texts(rm, [p], [r])[0] for p, r in zip(prompts, responses)]) * 1.5 + 0.25
    batches = []
    real = rm.raw_scores
    monkeypatch.setattr(rm, "raw_scores", lambda batch: (batches.append(len(batch.input_ids)), real(batch))[1])
    assert torch.allclose(rm.score(prompts, responses, batch_size=2), alone, atol=1e-5)
    assert batches == [2, 2, 1]
    encoded = encode_for_scoring(rm, prompts, responses, chunk=2)
    assert torch.allclose(rm.score(prompts, responses, encoded=encoded, batch_size=3), alone, atol=1e-5)


def test_sample_categorical_matches_the_probabilities_and_never_picks_zero_mass():
    from rlhf.models.sampling import sample_categorical

    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3]]).repeat(20000, 1) * 7.0  # unnormalised rows work too
    counts = torch.bincount(sample_categorical(probs), minlength=5).float() / 20000
    assert counts[0] == 0 and counts[2] == 0
    assert torch.allclose(counts, torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3]), atol=0.015), counts


def test_sampler_draws_from_the_full_forward_distribution(backbone, monkeypatch):
    """The KV-cached sampling loop (left padding, position ids, temperature) sees exactly the distribution that
    a full forward over the finished sequence gives at every response position."""
    import rlhf.models.sampling as sampling

    seen = []
    real = sampling.sample_categorical
    monkeypatch.setattr(
        sampling, "sample_categorical", lambda probs, u=None: (seen.append(probs.clone()), real(probs, u))[1]
    )
    policy = LanguageModelRole(backbone, "policy", temperature=0.7)
    query_ids, query_mask = encode_queries(
        backbone.tokenizer, ["A short one", "A much longer opening line of a review that"]
    )
    torch.manual_seed(1)
    with backbone.use("policy") as lm:
        response, loop_logprobs, _ = sampling.sample_tokens(lm, query_ids, query_mask, 6, policy.temperature)
    episodes = Episodes(
        query_ids, query_mask, response, torch.ones_like(response, dtype=torch.float), torch.ones(2, dtype=torch.bool)
    )
    with torch.no_grad():
        full = policy.logits(episodes).softmax(-1)  # [B, R, V]
        full_logprobs = policy.logprobs(episodes)
    sampled = torch.stack(seen, dim=1)
    assert sampled.shape == full.shape
    assert torch.allclose(sampled, full, atol=1e-5)
    assert torch.allclose(loop_logprobs, full_logprobs, atol=1e-4)  # the eval's KL reads these off the loop


def test_rows_that_stopped_leave_the_batch_and_the_others_sample_the_same_tokens(backbone):
    """With a stop rule, a row that stopped is no longer computed (later forwards see fewer rows); every row's
    tokens and log-probs up to its stop are those of sampling all positions, and 0 after it."""
    from rlhf.models.sampling import sample_tokens

    lm = backbone.causal_lm()
    query_ids, query_mask = encode_queries(
        backbone.tokenizer, ["One", "Two three", "A much longer opening line", "Four", "Five six"]
    )
    stops_at = lambda tokens, t: tokens % 4 == 0  # noqa: E731 - about a quarter of the vocabulary ends a response
    torch.manual_seed(3)
    full_tokens, full_logprobs, _ = sample_tokens(lm, query_ids, query_mask, 8, 0.9)
    batch_sizes = []
    hook = lm.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    torch.manual_seed(3)
    try:
        tokens, logprobs, _ = sample_tokens(lm, query_ids, query_mask, 8, 0.9, stops_at)
    finally:
        hook.remove()
    stops = [next((t for t in range(8) if int(full_tokens[row, t]) % 4 == 0), 7) for row in range(5)]
    assert min(stops) < 6 and max(stops) == 7, f"the seed should stop some rows early and keep one to the end: {stops}"
    for row, stop in enumerate(stops):
        assert tokens[row, : stop + 1].tolist() == full_tokens[row, : stop + 1].tolist()
        assert torch.allclose(logprobs[row, : stop + 1], full_logprobs[row, : stop + 1], atol=1e-5)
        assert tokens[row, stop + 1 :].eq(0).all() and logprobs[row, stop + 1 :].eq(0).all()
    assert batch_sizes[0] == 5 and len(batch_sizes) <= 8
    assert batch_sizes[1:] == [sum(stop > t for stop in stops) for t in range(len(batch_sizes) - 1)]


def test_samples_do_not_depend_on_the_batch_size(backbone, monkeypatch):
    import rlhf.models.sampling as sampling
    from rlhf.models.sampling import sample_texts, uniform_draws

    torch.manual_seed(5)
    stepwise = [torch.rand(3, 1) for _ in range(4)]  # how the sampler drew before draws were decoupled
    torch.manual_seed(5)
    assert torch.equal(uniform_draws(3, 4), torch.cat(stepwise, dim=1))
    monkeypatch.setattr(sampling, "DRAW_BLOCK", 2)  # blocks smaller than the batches below
    policy = LanguageModelRole(backbone, "policy", temperature=1.0)
    rule = StopRule(backbone.tokenizer, (".",), min_tokens=2)
    prompts = ["One", "Two three", "A much longer opening line", "Four", "Five six"]
    outputs = []
    for batch_size in (5, 3, 1):
        torch.manual_seed(7)
        outputs.append(sample_texts(policy, prompts, 6, rule, batch_size))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(set(outputs[0][0])) > 1  # the responses differ from each other


def test_value_head_with_folded_normalisation_outputs_the_normalised_score(backbone):
    rm = ScalarRole(backbone, "reward")
    rm.gain, rm.bias = 2.5, -0.75
    prompts, responses = ["The film opened with", "Plot:"], [" a long shot of the sea.", " none."]
    normalised = rm.score(prompts, responses)
    rm.fold_normalization()
    assert (rm.gain, rm.bias) == (1.0, 0.0)
    with torch.no_grad():
        assert torch.allclose(raw_scores_of_texts(rm, prompts, responses), normalised, atol=1e-5)


def test_sampling_keeps_the_frozen_prefix_that_the_finished_sequences_give(tiny_model_dir):
    """With keep_prefix, the sampling loop keeps the bottom layers' output at every position a log-prob or value reads
    (query, and response tokens before each row's stop); log-probs and values computed from it equal those of
    full forwards."""
    bb = top_layer_backbone(tiny_model_dir, "policy")
    bb.add_adapter("value")
    for p in bb.adapter_parameters("value"):
        p.data.normal_(0, 0.5)
    policy, value = LanguageModelRole(bb, "policy", temperature=0.8), ScalarRole(bb, "value")
    rule = StopRule(bb.tokenizer)
    rule.has_stop_string = torch.arange(len(rule.has_stop_string)) % 4 == 0  # about a quarter of tokens end a response
    torch.manual_seed(5)
    reuse = prefix_reuse(policy, LanguageModelRole(bb, None, temperature=0.8))
    assert reuse == PrefixReuse(keep_prefix=True, score_from_sampling=False)
    prompts = ["One", "Two three", "A much longer opening line", "Four", "Five six"]
    episodes, _ = sample_episodes(policy, prompts, 8, rule, reuse=reuse)
    lengths = episodes.response_mask.sum(-1).long().tolist()
    assert min(lengths) < 6 and max(lengths) == 8, (
        f"the seed should stop some rows early and keep one to the end: {lengths}"
    )
    Q = episodes.query_ids.shape[1]
    full_prefix = bb.frozen_prefix(episodes.input_ids, episodes.attention_mask)
    for row, n in enumerate(lengths):  # every position before the row's last response token was computed
        assert torch.allclose(episodes.prefix[row, : Q + n - 1], full_prefix[row, : Q + n - 1], atol=1e-5)
        assert episodes.prefix[row, Q + n - 1 :].eq(0).all()
    without = Episodes(
        episodes.query_ids, episodes.query_mask, episodes.response_ids, episodes.response_mask, episodes.has_stop
    )
    real = episodes.response_mask.bool()
    with torch.no_grad():
        assert torch.allclose(policy.logprobs(episodes)[real], policy.logprobs(without)[real], atol=1e-5)
        assert torch.allclose(value.values(episodes)[real], value.values(without)[real], atol=1e-5)


def test_backbones_share_a_frozen_prefix_only_with_the_same_bottom_layers(tiny_model_dir):
    a, b = top_layer_backbone(tiny_model_dir, "policy"), top_layer_backbone(tiny_model_dir, "policy")
    assert a.same_frozen_prefix(b)  # different top-layer adapters, same bottom layers
    with torch.no_grad():
        b.causal_lm().model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert not a.same_frozen_prefix(b)


def test_reward_model_scores_sampled_episodes_from_the_sampling_loop(tiny_model_dir):
    """With score_from_sampling, a finished row is fed its last token and EOS before it leaves the batch: the samples
    do not change, and the reward model's score from the kept bottom-layer output equals a full forward over query +
    response up to its stop + EOS (an EOS stop is that EOS), read at the EOS."""
    torch.manual_seed(0)
    bb = top_layer_backbone(tiny_model_dir, "policy")
    bb.add_adapter("reward")
    for p in bb.adapter_parameters("reward"):
        p.data.normal_(0, 0.5)
    policy, rm = LanguageModelRole(bb, "policy", temperature=0.8), ScalarRole(bb, "reward")
    rm.gain, rm.bias = 1.5, 0.25
    tok = bb.tokenizer
    rule = StopRule(tok)
    V = len(rule.is_eos)
    rule.is_eos = (
        torch.arange(V) % 23 == 0
    ) | rule.is_eos  # some rows stop at an "EOS", some at a stop string, some not at all
    rule.has_stop_string = torch.arange(V) % 17 == 0
    prompts = ["One", "Two three", "A much longer opening line", "Four", "Five six", "Seven", "Eight nine ten"]
    torch.manual_seed(0)
    plain, _ = sample_episodes(policy, prompts, 6, rule)
    torch.manual_seed(0)
    reuse = prefix_reuse(policy, reward=rm)
    assert reuse == PrefixReuse(keep_prefix=False, score_from_sampling=True)
    episodes, texts = sample_episodes(policy, prompts, 6, rule, reuse=reuse)
    assert torch.equal(plain.response_ids, episodes.response_ids) and torch.allclose(
        plain.sample_logprobs, episodes.sample_logprobs
    )
    n = episodes.response_mask.sum(-1).long().tolist()
    last = [int(episodes.response_ids[b, k - 1]) for b, k in enumerate(n)]
    kinds = [
        "eos" if bool(rule.is_eos[t]) else "stop" if s else "none" for t, s in zip(last, episodes.has_stop.tolist())
    ]
    assert {"eos", "stop", "none"} <= set(kinds), f"the seed should give every kind of ending: {kinds}"
    ids, mask = episodes.scoring.input_ids, episodes.scoring.attention_mask
    q_ids, q_mask = encode_queries(tok, prompts)
    for b, (k, kind) in enumerate(zip(n, kinds)):
        response = episodes.response_ids[b, :k].tolist()
        expected = response[:-1] + [tok.eos_token_id] if kind == "eos" else response + [tok.eos_token_id]
        assert ids[b][mask[b].bool()].tolist() == q_ids[b][q_mask[b].bool()].tolist() + expected
    with torch.no_grad():
        full = rm.raw_scores(ScoringInputs(ids, mask)) * 1.5 + 0.25
    assert torch.allclose(rm.score(prompts, texts, episodes, batch_size=3), full, atol=1e-5)
    # episodes without the reward model's input are scored from their texts
    assert torch.allclose(rm.score(prompts, texts, plain), rm.score(prompts, texts), atol=0)


def test_best_of_n_and_eval_sampling_draw_what_sample_texts_draws(backbone):
    """The three batch loops share `sampled_batches`: best-of-N's candidates and the eval's samples (with their KL
    to the policy itself, exactly 0) are what `sample_texts` draws from the same seed, whatever the batch size."""
    from rlhf.eval.evaluate import sample_with_kl
    from rlhf.models.best_of_n import draw_best_of_n
    from rlhf.models.sampling import sample_texts

    policy, rm = LanguageModelRole(backbone, "policy", temperature=1.0), ScalarRole(backbone, "reward")
    rule = StopRule(backbone.tokenizer, (".",), min_tokens=2)
    prompts = ["One", "Two three", "A much longer opening line"]
    torch.manual_seed(3)
    texts, stops, lengths = sample_texts(policy, [p for p in prompts for _ in range(2)], 6, rule, batch_size=4)
    torch.manual_seed(3)
    candidates, best = draw_best_of_n(policy, rm, prompts, 2, 6, rule, batch_size=5, missing_stop_penalty=-1.0)
    assert [c.response for c in candidates] == texts and [c.has_stop for c in candidates] == stops
    assert [b.response for b in best] == [
        max(candidates[2 * i : 2 * i + 2], key=lambda c: c.meta["rm_score"]).response for i in range(3)
    ]
    torch.manual_seed(3)
    eval_texts, eval_stops, eval_lengths, kls, scores = sample_with_kl(
        policy, policy, [p for p in prompts for _ in range(2)], 6, rule, batch_size=3, reward=rm
    )
    assert (eval_texts, eval_stops, eval_lengths) == (texts, stops, lengths) and kls == [0.0] * 6
    assert scores == pytest.approx([c.meta["rm_score_no_penalty"] for c in candidates], abs=1e-5)


def test_save_merged_writes_a_plain_model_that_computes_what_the_adapter_did(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.models.saving import save_merged

    bb = top_layer_backbone(tiny_model_dir, "policy")
    bb.add_adapter("value")  # another adapter on the same base is left out of the merged model
    for p in bb.adapter_parameters("value"):
        p.data.normal_(0, 0.5)
    ids, mask = encode_queries(bb.tokenizer, ["a short one", "a much longer prompt with several more words"])
    with torch.no_grad():
        expected = bb.lm_head(bb.hidden_states("policy", ids, mask))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale.txt").write_text("from an earlier run")
    save_merged(bb, "policy", tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left behind
    assert not (tmp_path / "model" / "stale.txt").exists() and bb.adapters == []
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        logits = merged(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    real = mask.bool()
    assert torch.allclose(logits[real], expected[real], atol=1e-4)
