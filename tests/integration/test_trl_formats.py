"""A TRL user's data files train as they are: `messages` conversations (train_sft, train_kd) and implicit-prompt
preference pairs (train_dpo, train_rm), with no key flags."""

from __future__ import annotations

import json

import pytest

from repulse.assets import default_dataset
from repulse.cli import train_dpo, train_kd, train_rm, train_sft
from tests.conftest import write_jsonl
from tests.integration.helpers import TRAIN_FLAGS


@pytest.mark.parametrize("command", [train_sft, train_kd], ids=["sft", "kd"])
def test_messages_data_trains_without_flags(command, tmp_path, capsys):
    chat = default_dataset("chat")  # the embedded chat data: {"messages": [...]} rows
    argv = [*TRAIN_FLAGS, "--max_len", "48", "--dataset", chat, "--save_path", str(tmp_path / "run")]
    assert command.main(argv) == 0
    assert "reading TRL's 'messages' format" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and all(r["loss"] > 0 for r in rows)


@pytest.mark.parametrize("command", [train_dpo, train_rm], ids=["dpo", "rm"])
def test_implicit_prompt_pairs_train_without_flags(command, tmp_path, capsys):
    pairs = [
        {
            "chosen": [{"role": "user", "content": f"This {who} is"}, {"role": "assistant", "content": f"a {good}."}],
            "rejected": [{"role": "user", "content": f"This {who} is"}, {"role": "assistant", "content": "a jerk."}],
        }
        for who in ("man", "woman", "kid", "boss")
        for good in ("kind man", "nice person")
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    argv = [*TRAIN_FLAGS, "--max_len", "48", "--dataset", str(data), "--save_path", str(tmp_path / "run")]
    assert command.main(argv) == 0
    assert "TRL's implicit prompt" in capsys.readouterr().err
