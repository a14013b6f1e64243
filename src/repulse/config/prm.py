"""Flags of train_prm (its --label_key is in DataArgs)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


@dataclass
class PRMArgs:
    _argument_group_name = "process reward model"

    placeholder_token: str = arg("ки", "The step-marker token placed after every step of the input text.")
    reward_tokens: list[str] = arg(["+", "-"], "Label tokens predicted at each marker, first = good step.")

    def __post_init__(self) -> None:
        require(len(self.reward_tokens) >= 2, "--reward_tokens needs at least two tokens")
        require(len(set(self.reward_tokens)) == len(self.reward_tokens), "--reward_tokens must be distinct")
