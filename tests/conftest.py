"""Shared fixtures: a tiny random Llama model that uses the built-in model's tokenizer; the labeling app's database
under test, SQLite and a throw-away PostgreSQL server."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhf.models.provision import builtin_model_dir

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (it sits beside the project on development and CI machines only)"
        )
    return SHARED_DATA


_database_numbers = itertools.count()


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server for the module (skips with a reason when Debian's binaries are absent)."""
    from label_helpers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The labeling app's database URL: a fresh SQLite file, then a fresh database on the module's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'label.db'}"
    import psycopg

    admin_url = request.getfixturevalue("postgres")
    name = f"test_{next(_database_numbers)}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + "/" + name
