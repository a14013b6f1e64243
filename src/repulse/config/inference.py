"""Flags of batch_inference, interactive_chat and lora_combiner. Names are OpenRLHF's, verbatim.

These commands also take parts of shared groups: the model (ModelArgs), the data and prompt format (DataArgs), the
sampling (GenerationArgs), the reward model (RewardArgs) and where the result goes (OutputArgs).
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import ModelArgs
from repulse.config.fields import arg, require
from repulse.config.output import OutputArgs
from repulse.config.reward import RewardArgs
from repulse.config.sampling import GenerationArgs

EVAL_TASKS = ("generate", "generate_vllm", "rm")
POST_PROCESSORS = ("rs", "csft", "iter_dpo")
DEFAULT_REWARD_TEMPLATE = "{input} <rm_score>: {reward} "


@dataclass
class InferenceArgs:
    _argument_group_name = "batch inference"

    eval_task: str = arg("generate", f"What to do: one of {', '.join(EVAL_TASKS)}.")
    vllm: bool = arg(False, "Same as --eval_task generate_vllm (the fork's flag).")
    tp_size: int = arg(1, "generate_vllm: tensor-parallel GPUs for vLLM.")
    best_of_n: int = arg(1, "Responses per prompt. With --reward_pretrain only the best is written.")
    micro_batch_size: int = arg(16, "Prompts per model call (HF backend) / texts per reward-model call.")
    post_processor: str | None = arg(
        None,
        "Turn scored rows into training data: rs (best per prompt, SFT rows), csft (reward-conditioned "
        "prompts, SFT rows), iter_dpo (best vs worst per prompt, DPO rows).",
    )
    reward_template: str = arg(DEFAULT_REWARD_TEMPLATE, "csft: the new input; holds '{input}' and '{reward}'.")

    def __post_init__(self) -> None:
        require(self.eval_task in EVAL_TASKS, f"--eval_task must be one of {EVAL_TASKS}, got {self.eval_task!r}")
        require(not (self.vllm and self.eval_task == "rm"), "--vllm generates; it does not apply to --eval_task rm")
        require(self.tp_size >= 1, f"--tp_size must be >= 1, got {self.tp_size}")
        require(self.best_of_n >= 1, f"--best_of_n must be >= 1, got {self.best_of_n}")
        require(self.micro_batch_size >= 1, f"--micro_batch_size must be >= 1, got {self.micro_batch_size}")
        require(
            self.post_processor is None or self.post_processor in POST_PROCESSORS,
            f"--post_processor must be one of {POST_PROCESSORS}, got {self.post_processor!r}",
        )
        require(
            "{input}" in self.reward_template and "{reward}" in self.reward_template,
            "--reward_template must contain '{input}' and '{reward}'",
        )

    def task(self) -> str:
        return "generate_vllm" if self.vllm else self.eval_task

    def scores(self, reward: RewardArgs) -> bool:
        """Whether the rows get a reward."""
        return self.eval_task == "rm" or reward.reward_pretrain is not None


def check_batch_inference(
    model: ModelArgs,
    sampling: GenerationArgs,
    reward: RewardArgs,
    output: OutputArgs,
    inference: InferenceArgs,
) -> None:
    """Rules that span batch_inference's groups, and flags of shared groups that mean nothing to it."""
    require(not model.gradient_checkpointing, "--gradient_checkpointing applies to training, not batch_inference")
    require(bool(output.output_path), "--output_path is required (the JSON Lines file to write)")
    require(
        not (sampling.greedy_sampling and inference.best_of_n > 1),
        "--best_of_n > 1 needs sampling: greedy decoding gives N copies of one response",
    )
    require(
        inference.post_processor is None or inference.scores(reward),
        f"--post_processor {inference.post_processor} needs rewards: pass --reward_pretrain or --eval_task rm",
    )
    require(
        not reward.normalize_reward or inference.scores(reward),
        "--normalize_reward standardizes rewards: pass --reward_pretrain or --eval_task rm",
    )
    require(
        inference.task() == "generate_vllm" or inference.tp_size == 1,
        "--tp_size applies to --eval_task generate_vllm only",
    )


@dataclass
class ChatArgs:
    _argument_group_name = "chat"

    ta_prompt: str | None = arg(None, "File whose text starts every conversation (a system message with templates).")
    enable_csft: bool = arg(False, "Append --csft_prompt to each user turn (conditional-SFT models).")
    csft_prompt: str = arg("<rm_score>: 5.00", "The reward condition --enable_csft appends.")


@dataclass
class MergeArgs:
    _argument_group_name = "LoRA merge"

    lora_path: str | None = arg(None, "LoRA adapter folder (adapter_config.json + weights), e.g. runs/sft/final.")
    is_rm: bool = arg(False, "The base is a reward model (sequence regression); its head is kept.")

    def __post_init__(self) -> None:
        require(bool(self.lora_path), "--lora_path is required (the LoRA adapter folder)")


def check_merge(output: OutputArgs) -> None:
    require(bool(output.output_path), "--output_path is required (the folder for the merged model)")
