"""Flags of how responses are sampled.

SamplingArgs holds what every sampler reads (RL rollouts extend it: exact ancestral sampling at the defaults);
GenerationArgs adds what the commands that only generate read. A command lists GenerationArgs with the flags it
takes (`only=`), and its own defaults where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import SeedArgs
from repulse.config.fields import arg, require


@dataclass
class SamplingArgs:
    temperature: float = arg(
        1.0,
        "Sampling temperature.",
        roles={
            "estimate_rare_harmful_outputs": "Temperature T of the ITGIS, mixture and MHIS proposals over inputs (its "
            "scale depends on the model's gradients; try another T when the result warns).",
            "batch_inference": "Sampling temperature (ignored with --greedy_sampling).",
            "interactive_chat": "Sampling temperature (ignored with --greedy_sampling).",
        },
    )
    top_p: float = arg(1.0, "Nucleus sampling: keep the smallest token set with this much probability (1 = off).")
    top_k: int = arg(0, "Top-k sampling: keep the k most likely tokens (0 = off).")

    def __post_init__(self) -> None:
        require(self.temperature > 0 or self.is_greedy(), f"--temperature must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"--top_p must be in (0, 1], got {self.top_p}")
        require(self.top_k >= 0, f"--top_k must be >= 0 (0: off), got {self.top_k}")

    def is_greedy(self) -> bool:
        return False


@dataclass
class GenerationArgs(SamplingArgs, SeedArgs):
    _argument_group_name = "sampling"

    repetition_penalty: float = arg(1.0, "Divide the logits of tokens already in the text by this (1 = off).")
    greedy_sampling: bool = arg(False, "Greedy decoding (argmax) instead of sampling.")
    max_new_tokens: int = arg(1024, "Most tokens per response (capped by the model's context length).")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.repetition_penalty > 0, f"--repetition_penalty must be > 0, got {self.repetition_penalty}")
        require(self.max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def is_greedy(self) -> bool:
        return self.greedy_sampling
