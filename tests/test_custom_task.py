"""The custom task: your own prompts and demonstrations in TRL's formats with your column names, chat templates,
a stable held-out share, and a Python gold scorer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rlhf.config_checks import ConfigError
from rlhf.config_loading import load_config
from rlhf.models.provision import load_tokenizer
from rlhf.tasks import task_and_stop_rule, task_for
from rlhf.tasks.custom import chat_render, end_of_turn, in_test_share, plain_render, response_text


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def custom_config(tiny_model_dir, *overrides: str):
    return load_config(None, ["task.name=custom", f"model.name_or_path={tiny_model_dir}", *overrides])


def test_in_test_share_by_hand():
    # crc32("abc") = 891568578, % 10000 = 8578; crc32("hello") % 10000 = 870
    assert in_test_share("abc", 0.9) and not in_test_share("abc", 0.5)
    assert in_test_share("hello", 0.1) and not in_test_share("hello", 0.05)
    assert not in_test_share("abc", 0.0)


def test_plain_render_and_response_text_by_hand():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert plain_render(messages) == "system: Be brief.\nuser: Hi\nassistant:"
    assert response_text(" plain", "f:1") == " plain"
    assert response_text([{"role": "assistant", "content": "Yes."}], "f:1") == "Yes."
    with pytest.raises(ValueError, match="f:2: the completion has no assistant turn"):
        response_text([{"role": "user", "content": "?"}], "f:2")


def test_chat_template_render_and_end_of_turn(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))  # the built-in SmolLM2 tokenizer: ChatML, EOS = <|im_end|>
    text = chat_render(tokenizer)([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert end_of_turn(tokenizer) is None  # the end of turn is EOS: EOS ends a response already
    tokenizer.eos_token = "<|endoftext|>"  # a template whose end of turn is not EOS
    assert end_of_turn(tokenizer) == "<|im_end|>"


def test_prompt_only_file_with_column_mapping_and_stable_test_share(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Question {i}?", "other": i} for i in range(40)]
    source = write_jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = custom_config(
        tiny_model_dir, f"task.source={source}", "task.columns.prompt=instruction", "task.test_fraction=0.25"
    )
    task = task_for(cfg)
    train = [p.text for p in task.load_prompts("train", source=str(source))]
    test = [p.text for p in task.load_prompts("test", source=str(source))]
    assert sorted(train + test) == sorted(r["instruction"] for r in rows) and not set(train) & set(test)
    assert sorted(test) == sorted(r["instruction"] for r in rows if in_test_share(r["instruction"], 0.25))
    assert 0 < len(test) < 20
    # the same split in another run, whatever the seed of the shuffle
    again = [p.text for p in task_for(cfg).load_prompts("test", source=str(source), seed=5)]
    assert sorted(again) == sorted(test)


def test_no_evaluation_prompts_is_an_error_unless_asked(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"P{i}"} for i in range(4)])
    task = task_for(custom_config(tiny_model_dir, f"task.source={source}"))
    with pytest.raises(ValueError, match="no evaluation prompts .* task.test_fraction .* task.eval_on_train"):
        task.load_prompts("test", source=str(source))
    task = task_for(custom_config(tiny_model_dir, f"task.source={source}", "task.eval_on_train=true"))
    assert len(task.load_prompts("test", source=str(source))) == 4
    test_file = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "T1"}, {"prompt": "T2"}])
    task = task_for(custom_config(tiny_model_dir, f"task.source={source}", f"task.test_source={test_file}"))
    assert sorted(p.text for p in task.load_prompts("test", source=str(source))) == ["T1", "T2"]


def test_conversational_prompt_completion_demonstrations_use_the_chat_template(tiny_model_dir, tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Say {i}."}],
            "completion": [{"role": "assistant", "content": f"{i}."}],
        }
        for i in range(6)
    ]
    source = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = custom_config(tiny_model_dir, f"task.source={source}", "task.eval_on_train=true")
    task = task_for(cfg)
    demos = task.load_demonstrations("train", source=str(source))
    assert len(demos) == 6
    for d in demos:
        assert (
            d.prompt.endswith("<|im_start|>assistant\n") and d.response == d.prompt.split("Say ")[1].split(".")[0] + "."
        )
    cfg_plain = custom_config(tiny_model_dir, f"task.source={source}", "task.chat_template=none")
    assert task_for(cfg_plain).load_demonstrations("train", source=str(source))[0].prompt.startswith("user: Say ")
    # the stop rule: EOS (= the template's end of turn here) and the task's stop strings
    _, response_length, stop_rule = task_and_stop_rule(
        custom_config(tiny_model_dir, f"task.source={source}", "task.stop_strings=[END]", "task.response_length=12"),
        load_tokenizer(str(tiny_model_dir)),
    )
    assert response_length == 12 and stop_rule.has_stop_string.any()


def test_prompts_only_file_cannot_give_demonstrations(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "P1"}])
    task = task_for(custom_config(tiny_model_dir, f"task.source={source}"))
    with pytest.raises(ValueError, match="needs a completion .* task.demonstrations"):
        task.load_demonstrations("train", source=str(source))


def test_python_gold_scorer(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "my_gold.py").write_text(
        "def length_score(prompts, responses):\n    return [len(r) / 10 for r in responses]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "P1"}])
    task = task_for(custom_config(tiny_model_dir, f"task.source={source}", "task.gold=python:my_gold:length_score"))
    assert task.gold_scorer(["a", "b"], ["xx", "xxxxx"]) == [0.2, 0.5]
    with pytest.raises(ValueError, match="cannot load my_gold.missing"):
        task_for(custom_config(tiny_model_dir, f"task.source={source}", "task.gold=python:my_gold:missing"))
    with pytest.raises(ConfigError, match="expected vader, lm or python:MODULE:FUNCTION"):
        custom_config(tiny_model_dir, "task.gold=my_gold.length_score")
    sys.modules.pop("my_gold", None)


def test_columns_must_name_trl_fields():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['answer'\]"):
        load_config(None, ["task.columns.answer=x"])
    cfg = load_config(None, ["task.columns.prompt=instruction", "task.columns.completion=gold"])
    assert cfg.task.columns == {"prompt": "instruction", "completion": "gold"}
