"""Flags of batch_inference, interactive_chat and lora_combiner. Names are OpenRLHF's, verbatim."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

EVAL_TASKS = ("generate", "generate_vllm", "rm")
POST_PROCESSORS = ("rs", "csft", "iter_dpo")
DEFAULT_REWARD_TEMPLATE = "{input} <rm_score>: {reward} "


@dataclass
class SamplingArgs:
    _argument_group_name = "sampling"

    temperature: float = arg(1.0, "Sampling temperature (ignored with --greedy_sampling).")
    top_p: float = arg(1.0, "Nucleus sampling: keep the smallest token set with this much probability.")
    repetition_penalty: float = arg(1.0, "Divide the logits of tokens already in the text by this (1 = off).")
    greedy_sampling: bool = arg(False, "Greedy decoding (argmax) instead of sampling.")

    def __post_init__(self) -> None:
        require(self.greedy_sampling or self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"--top_p must be in (0, 1], got {self.top_p}")
        require(self.repetition_penalty > 0, f"--repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class InferenceArgs(SamplingArgs):
    _argument_group_name = "batch inference (and sampling)"

    eval_task: str = arg("generate", f"What to do: one of {', '.join(EVAL_TASKS)}.")
    vllm: bool = arg(False, "Same as --eval_task generate_vllm (the fork's flag).")
    tp_size: int = arg(1, "generate_vllm: tensor-parallel GPUs for vLLM.")
    max_new_tokens: int = arg(1024, "Most tokens per response (capped by the model's context length).")
    best_of_n: int = arg(1, "Responses per prompt. With --reward_pretrain only the best is written.")
    micro_batch_size: int = arg(16, "Prompts per model call (HF backend) / texts per reward-model call.")
    output_path: str | None = arg(None, "JSON Lines output: one {input, output[, reward]} object per line.")
    reward_pretrain: str | None = arg(
        None,
        "Reward model folder. eval_task rm: the scorer (default: the embedded tiny RM); generate: keep the "
        "best of --best_of_n by reward and write the reward.",
    )
    value_head_prefix: str = arg("score", "Name of the reward head module in the reward model.")
    post_processor: str | None = arg(
        None,
        "Turn scored rows into training data: rs (best per prompt, SFT rows), csft (reward-conditioned "
        "prompts, SFT rows), iter_dpo (best vs worst per prompt, DPO rows).",
    )
    reward_template: str = arg(DEFAULT_REWARD_TEMPLATE, "csft: the new input; holds '{input}' and '{reward}'.")
    normalize_reward: bool = arg(False, "Standardize the written rewards over the whole file (z-scores).")
    seed: int = arg(42, "Sampling seed (process r of a torchrun job uses seed + r).")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.eval_task in EVAL_TASKS, f"--eval_task must be one of {EVAL_TASKS}, got {self.eval_task!r}")
        require(not (self.vllm and self.eval_task == "rm"), "--vllm generates; it does not apply to --eval_task rm")
        require(self.tp_size >= 1, f"--tp_size must be >= 1, got {self.tp_size}")
        require(self.max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self.best_of_n >= 1, f"--best_of_n must be >= 1, got {self.best_of_n}")
        require(
            not (self.greedy_sampling and self.best_of_n > 1),
            "--best_of_n > 1 needs sampling: greedy decoding gives N copies of one response",
        )
        require(self.micro_batch_size >= 1, f"--micro_batch_size must be >= 1, got {self.micro_batch_size}")
        require(bool(self.output_path), "--output_path is required (the JSON Lines file to write)")
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

    def scores(self) -> bool:
        """Whether the rows get a reward."""
        return self.eval_task == "rm" or self.reward_pretrain is not None


def check_batch_inference(model, data, inference: InferenceArgs) -> None:
    """Flags of the shared groups that have no meaning for inference fail here rather than being ignored."""
    require(not model.gradient_checkpointing, "--gradient_checkpointing applies to training, not batch_inference")
    require(not data.packing_samples, "--packing_samples applies to training, not batch_inference")
    require(data.eval_dataset is None, "--eval_dataset: batch_inference reads --dataset only")
    require(
        inference.post_processor is None or inference.scores(),
        f"--post_processor {inference.post_processor} needs rewards: pass --reward_pretrain or --eval_task rm",
    )
    require(
        not inference.normalize_reward or inference.scores(),
        "--normalize_reward standardizes rewards: pass --reward_pretrain or --eval_task rm",
    )
    require(
        inference.task() == "generate_vllm" or inference.tp_size == 1,
        "--tp_size applies to --eval_task generate_vllm only",
    )


@dataclass
class ChatArgs(SamplingArgs):
    _argument_group_name = "chat (and sampling)"

    max_len: int = arg(2048, "Most tokens of prompt + reply (capped by the model's context length).")
    input_template: str = arg("User: {}\nAssistant: ", "Template of one user turn (without --apply_chat_template).")
    apply_chat_template: bool = arg(False, "Format the conversation with the tokenizer's chat template.")
    tokenizer_chat_template: str | None = arg(None, "Override the tokenizer's chat template (a Jinja string).")
    ta_prompt: str | None = arg(None, "File whose text starts every conversation (a system message with templates).")
    enable_csft: bool = arg(False, "Append --csft_prompt to each user turn (conditional-SFT models).")
    csft_prompt: str = arg("<rm_score>: 5.00", "The reward condition --enable_csft appends.")
    seed: int = arg(42, "Sampling seed.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_len >= 2, f"--max_len must be >= 2, got {self.max_len}")
        require("{}" in self.input_template, "--input_template must contain '{}' where the user text goes")


@dataclass
class MergeArgs:
    _argument_group_name = "LoRA merge"

    model_path: str | None = arg(
        None,
        "Base model folder or hub name. Default: the base the adapter records (base_model_name_or_path in its "
        "adapter_config.json).",
        aliases=["--pretrain"],
    )
    lora_path: str | None = arg(None, "LoRA adapter folder (adapter_config.json + weights), e.g. runs/sft/final.")
    output_path: str | None = arg(None, "Folder for the merged model and tokenizer (replaced atomically).")
    is_rm: bool = arg(False, "The base is a reward model (sequence regression); its head is kept.")
    bf16: bool = arg(False, "Load, merge and save in bfloat16.")

    def __post_init__(self) -> None:
        require(bool(self.lora_path), "--lora_path is required (the LoRA adapter folder)")
        require(bool(self.output_path), "--output_path is required (the folder for the merged model)")
