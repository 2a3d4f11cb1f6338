"""Sampling reads a prompt that repeats in its batch (K responses per prompt) once: the rows it finds equal, and
the same tokens, log-probs and hidden states as reading every row."""

from __future__ import annotations

import torch

from rlhf.models.architecture import decoder_layers
from rlhf.models.encoding import encode_queries
from rlhf.models.provision import load_causal_lm, load_tokenizer


def test_distinct_rows_by_hand():
    from rlhf.models.sampling import distinct_rows

    first, copies = distinct_rows(torch.tensor([[1, 2], [3, 4], [1, 2], [3, 4], [0, 9]]))
    # the distinct rows sorted: [0, 9] (row 4), [1, 2] (row 0), [3, 4] (row 1)
    assert first.tolist() == [4, 0, 1] and copies.tolist() == [1, 2, 1, 2, 0]
    first, copies = distinct_rows(torch.tensor([[1, 2], [3, 4]]))
    assert first.tolist() == [0, 1] and copies is None


def test_a_repeated_prompt_is_read_once_and_samples_as_if_read_per_row(tiny_model_dir, monkeypatch):
    """K responses per prompt repeat each query K times: the prompt's forward pass runs once per distinct query
    (with its mask) and is copied to its rows; tokens, log-probs and the kept bottom-layer output equal those of
    reading every row."""
    import rlhf.models.sampling as sampling

    tokenizer = load_tokenizer(str(tiny_model_dir))
    lm = load_causal_lm(str(tiny_model_dir), tokenizer).eval()
    prompts = ["One", "Two three", "One", "A much longer opening line", "Two three", "One"]
    query_ids, query_mask = encode_queries(tokenizer, prompts)
    layer = decoder_layers(lm)[1][1]
    uniforms = torch.rand(6, 5, generator=torch.Generator().manual_seed(2))
    prefill_rows = []
    hook = lm.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_rows.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        once = sampling.sample_tokens(lm, query_ids, query_mask, 5, 0.9, uniforms=uniforms, hidden_of=layer)
        monkeypatch.setattr(sampling, "distinct_rows", lambda rows: (torch.arange(len(rows)), None))
        per_row = sampling.sample_tokens(lm, query_ids, query_mask, 5, 0.9, uniforms=uniforms, hidden_of=layer)
    finally:
        hook.remove()
    Q = query_ids.shape[1]
    assert [shape for shape in prefill_rows if shape[1] == Q] == [(3, Q), (6, Q)], prefill_rows
    assert torch.equal(once[0], per_row[0]) and torch.equal(once[1], per_row[1])
    assert torch.allclose(once[2], per_row[2], atol=1e-6)
    assert not torch.equal(once[0][0], once[0][2])  # rows of one prompt still draw their own tokens
