"""Flag groups of the model, its data and the training run. Names are the OpenRLHF / RePULSe flags, verbatim.

Some flags are declared once here and held by every group that reads them: training data (DataArgs) and RL
prompts (RolloutArgs) extend PromptArgs; the optimiser settings and the sampling flags extend SeedArgs; the groups
of the scoring, estimating and forecasting commands extend BatchArgs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from repulse.config.fields import arg, require

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_min_lr", "constant", "constant_with_warmup")


@dataclass
class SeedArgs:
    seed: int = arg(
        42,
        "Seed of every random draw: data order, new heads' initialisation, dropout and sampling (processes that "
        "sample their own share of the data add their rank).",
    )


@dataclass
class BatchArgs:
    batch_size: int = arg(
        16,
        "Items per model call.",
        roles={
            "serve_rm": "Most texts in one model call; requests from many clients are merged up to this.",
            "estimate_rare_harmful_outputs": "Inputs per model call; also the ITGIS proposal-update batch and the "
            "number of MHIS chains.",
            "forecast_rare_outputs": "Queries per model call.",
        },
    )

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")


@dataclass
class ModelArgs:
    _argument_group_name = "model"

    pretrain: str | None = arg(
        None,
        "Model folder or hub name. Default: the embedded tiny LM.",
        roles={
            "forecast_rare_outputs": "Model folders or hub names, comma-separated: one forecast each. Default: the "
            "embedded tiny LM.",
            "lora_combiner": "Base model folder or hub name. Default: the base the adapter records "
            "(base_model_name_or_path in its adapter_config.json).",
        },
    )
    bf16: bool = arg(
        False,
        "Load the model in bfloat16 (CPUs with AVX512-BF16 and any recent GPU).",
        roles={
            **dict.fromkeys(
                ("train_sft", "train_rm", "train_dpo", "train_kto", "train_kd", "train_prm", "train_ppo"),
                "Load and train in bfloat16 (CPUs with AVX512-BF16 and any recent GPU).",
            ),
            "lora_combiner": "Load, merge and save in bfloat16.",
        },
    )
    flash_attn: bool = arg(False, "Use FlashAttention-2 (needs a CUDA GPU and the flash-attn package).")
    load_in_4bit: bool = arg(
        False, "Load the base weights in 4-bit NF4 (bitsandbytes, [gpu] extra); training needs LoRA with it."
    )
    gradient_checkpointing: bool = arg(False, "Recompute activations in the backward pass to save memory.")
    disable_fast_tokenizer: bool = arg(False, "Use the slow (Python) tokenizer when one exists.")


@dataclass
class LoraArgs:
    _argument_group_name = "LoRA"

    lora_rank: int = arg(0, "LoRA rank; 0 trains all weights.")
    lora_alpha: int = arg(16, "LoRA scaling alpha.")
    lora_dropout: float = arg(0.0, "Dropout on the LoRA branch.")
    target_modules: list[str] = arg(["all-linear"], "Modules that get LoRA adapters ('all-linear' = every linear).")

    def __post_init__(self) -> None:
        require(self.lora_rank >= 0, f"--lora_rank must be >= 0, got {self.lora_rank}")
        require(self.lora_alpha > 0, f"--lora_alpha must be > 0, got {self.lora_alpha}")
        require(0.0 <= self.lora_dropout < 1.0, f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class PromptArgs:
    """Where each row's prompt is and how it is formatted: the training data and the RL prompts read them alike."""

    input_key: str = arg("input", "Key (JSON field or column) of each row's prompt or input text.")
    input_template: str | None = arg(
        None,
        "Template with one '{}' where the prompt (in a chat, each user turn) goes, e.g. 'User: {}\\nAssistant: '.",
    )
    apply_chat_template: bool = arg(
        False, "Format prompts (in a chat, the whole conversation) with the tokenizer's chat template."
    )
    tokenizer_chat_template: str | None = arg(None, "Override the tokenizer's chat template (a Jinja string).")
    max_samples: int = arg(100_000_000, "Use at most this many rows (examples or prompts) of the blended data.")

    def __post_init__(self) -> None:
        require(self.max_samples >= 1, f"--max_samples must be >= 1, got {self.max_samples}")
        if self.input_template is not None:
            require("{}" in self.input_template, "--input_template must contain '{}' where the prompt goes")


@dataclass
class DataArgs(PromptArgs):
    _argument_group_name = "data"

    dataset: str | None = arg(None, "Comma-separated data files, folders or hub names. Default: embedded tiny data.")
    dataset_probs: str = arg("1.0", "Comma-separated sampling probabilities for blending --dataset entries.")
    dataset_split: str = arg("train", "Split to read from each dataset.")
    eval_dataset: str | None = arg(None, "Comma-separated evaluation datasets (same format as --dataset).")
    eval_split: str = arg("train", "Split to read from each eval dataset.")
    output_key: str | None = arg(
        "output", "JSON key of the response in prompt/response rows (empty: rows hold whole conversations or text)."
    )
    label_key: str = arg(
        "label",
        "JSON key of each row's label.",
        roles={
            "train_kto": "JSON key of each row's label: desirable (true/1) or undesirable (false/0).",
            "train_prm": "JSON key of each row's per-step labels (reward tokens or probabilities).",
        },
    )
    max_len: int = arg(
        512,
        "Most tokens per example (prompt + response), capped at the model's positions; a longer one keeps its first "
        "tokens.",
        roles={
            "serve_rm": "Most tokens per scored text (+ EOS), capped at the model's positions; a longer text keeps "
            "its first tokens, as reward models are trained.",
            "batch_inference": "Most tokens per text, capped at the model's positions: a prompt to generate from "
            "keeps its last tokens; a scored text (+ EOS) keeps its first, as reward models are trained.",
            "interactive_chat": "Most tokens of conversation + reply, capped at the model's positions: a longer "
            "conversation starts afresh; a longer message keeps its last tokens.",
        },
    )
    packing_samples: bool = arg(
        False,
        "Pack several examples into one row (block-diagonal attention; the same loss as padding).",
        roles=dict.fromkeys(
            ("train_rm", "train_dpo", "train_prm"),
            "Run each micro-batch's padded rows as one packed row (block-diagonal attention, or restarting "
            "positions under --flash_attn): no compute on padding, the same loss.",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_len >= 2, f"--max_len must be >= 2, got {self.max_len}")
        self.probabilities()  # fail at parse time, not after the model has loaded

    def probabilities(self) -> list[float]:
        """--dataset_probs as floats, one per --dataset entry (checked against the dataset list)."""
        try:
            probs = [float(p) for p in self.dataset_probs.split(",")]
        except ValueError as err:
            raise_probs(self.dataset_probs, f"not numbers ({err})")
        names = self.dataset.split(",") if self.dataset else [""]
        if len(probs) != len(names):
            raise_probs(self.dataset_probs, f"{len(probs)} values for {len(names)} datasets")
        if not all(math.isfinite(p) and p > 0 for p in probs) or not abs(sum(probs) - 1.0) <= 1e-6:
            raise_probs(self.dataset_probs, "each must be > 0 and they must sum to 1")
        return probs


def raise_probs(value: str, why: str) -> None:
    require(False, f"--dataset_probs {value!r}: {why}")


@dataclass
class ScheduleArgs(SeedArgs):
    """Optimizer settings other than the learning rate (PPO has one learning rate per model)."""

    _argument_group_name = "optimisation"

    lr_scheduler: str = arg("cosine_with_min_lr", f"Learning-rate schedule: one of {', '.join(LR_SCHEDULERS)}.")
    lr_warmup_ratio: float = arg(0.03, "Fraction of the optimizer steps used for linear warm-up.")
    min_lr_ratio: float = arg(0.1, "cosine_with_min_lr: the final learning rate as a fraction of the peak.")
    adam_betas: list[float] = arg([0.9, 0.95], "Adam betas (two floats).")
    l2: float = arg(0.0, "Weight decay.")
    max_norm: float = arg(1.0, "Gradient clipping norm; 0 disables clipping.")
    micro_train_batch_size: int = arg(8, "Examples per forward pass on each process.")
    train_batch_size: int = arg(128, "Examples per optimizer step over all processes (sets gradient accumulation).")
    max_epochs: int = arg(1, "Passes over the training data (PPO: over each rollout buffer).")

    def __post_init__(self) -> None:
        require(self.lr_scheduler in LR_SCHEDULERS, f"--lr_scheduler must be one of {LR_SCHEDULERS}")
        require(0 <= self.lr_warmup_ratio < 1, f"--lr_warmup_ratio must be in [0, 1), got {self.lr_warmup_ratio}")
        require(0 <= self.min_lr_ratio <= 1, f"--min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        require(len(self.adam_betas) == 2, f"--adam_betas takes two floats, got {self.adam_betas}")
        require(
            all(0 <= b < 1 for b in self.adam_betas), f"--adam_betas must each be in [0, 1), got {self.adam_betas}"
        )
        require(math.isfinite(self.l2) and self.l2 >= 0, f"--l2 must be >= 0, got {self.l2}")
        require(math.isfinite(self.max_norm) and self.max_norm >= 0, f"--max_norm must be >= 0, got {self.max_norm}")
        require(self.micro_train_batch_size >= 1, "--micro_train_batch_size must be >= 1")
        require(self.train_batch_size >= 1, f"--train_batch_size must be >= 1, got {self.train_batch_size}")
        require(self.max_epochs >= 1, f"--max_epochs must be >= 1, got {self.max_epochs}")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each process."""
        per_step = self.micro_train_batch_size * world_size
        require(
            self.train_batch_size % per_step == 0,
            f"--train_batch_size {self.train_batch_size} must be a multiple of --micro_train_batch_size x "
            f"processes = {per_step}",
        )
        return self.train_batch_size // per_step


@dataclass
class OptimArgs(ScheduleArgs):
    learning_rate: float = arg(5e-6, "Peak learning rate.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"--learning_rate must be a finite number > 0, got {self.learning_rate}",
        )


STRATEGIES = ("auto", "deepspeed", "fsdp2", "ddp")


@dataclass
class PPOOptimArgs(ScheduleArgs):
    """train_ppo's optimisation: one learning rate per model it trains."""

    actor_learning_rate: float = arg(1e-6, "PPO actor, or the proposal q in harmlessness mode (0 freezes q).")
    critic_learning_rate: float = arg(9e-6, "PPO critic learning rate.")
    base_actor_learning_rate: float = arg(1e-6, "Harmlessness mode: learning rate of the base model p_theta.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for flag in ("actor_learning_rate", "critic_learning_rate", "base_actor_learning_rate"):
            require(getattr(self, flag) >= 0, f"--{flag} must be >= 0")


@dataclass
class StrategyArgs:
    _argument_group_name = "strategy (processes and devices)"

    strategy: str = arg(
        "auto",
        "How training spreads over processes: deepspeed (ZeRO, see --zero_stage), fsdp2 (torch fully_shard per "
        "decoder layer), ddp (torch DistributedDataParallel under torchrun, else one process), or auto: deepspeed "
        "where it is installed and the run has several processes, was started by the deepspeed launcher or uses "
        "--adam_offload; ddp otherwise (the log says which, and why).",
    )
    zero_stage: int | None = arg(
        None,
        "DeepSpeed ZeRO stage: 0 (data parallel), 1 (optimizer state sharded), 2 (and gradients), 3 (and "
        "parameters). Default 2, as in the fork's commands; where DeepSpeed does not run, the log says so.",
    )
    adam_offload: bool = arg(
        False,
        "DeepSpeed ZeRO-Offload: Adam's state and step on the CPU (DeepSpeedCPUAdam; ZeRO stage 1-3; with stage 3 "
        "the parameters too, as in OpenRLHF).",
    )
    local_rank: int = arg(
        -1, "The process's rank on its node, passed by the deepspeed launcher (torchrun sets LOCAL_RANK instead)."
    )
    dist_backend: str = arg(
        "auto",
        "torch.distributed backend: auto (nccl on GPU, gloo on CPU; DeepSpeed's choice under it), nccl or gloo.",
    )

    def __post_init__(self) -> None:
        require(
            self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
        )
        require(self.zero_stage in (None, 0, 1, 2, 3), f"--zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        require(self.dist_backend in ("auto", "nccl", "gloo"), "--dist_backend must be auto, nccl or gloo")
        require(
            not (self.adam_offload and self.strategy in ("fsdp2", "ddp")),
            f"--adam_offload is DeepSpeed's ZeRO-Offload: it needs --strategy deepspeed or auto, not {self.strategy}",
        )
        require(
            not (self.adam_offload and self.zero_stage == 0),
            "--adam_offload needs --zero_stage 1, 2 or 3 (ZeRO-Offload moves the partitioned optimizer to the CPU)",
        )

    def stage(self) -> int:
        """The ZeRO stage DeepSpeed runs with: --zero_stage, or the fork's 2."""
        return 2 if self.zero_stage is None else self.zero_stage

    def given(self) -> list[str]:
        """The training-only flags this run set (for commands that train nothing, which report them)."""
        shown = []
        if self.strategy != "auto":
            shown.append(f"--strategy {self.strategy}")
        if self.zero_stage is not None:
            shown.append(f"--zero_stage {self.zero_stage}")
        if self.adam_offload:
            shown.append("--adam_offload")
        return shown


@dataclass
class CheckpointArgs:
    _argument_group_name = "checkpoints and outputs"

    save_path: str = arg(
        "./ckpt",
        "Output folder of the run: config.yaml, metrics.jsonl and final/ (Hugging Face format).",
        roles={"demo": "Output folder: one run folder per method and seed, demo.json and the plots."},
    )
    ckpt_path: str | None = arg(
        None,
        "Folder of resumable training checkpoints. Default: <save_path>/checkpoints.",
        roles=dict.fromkeys(
            ("evaluate_gcg", "evaluate_beast"),
            "Weights to load into --pretrain (a state-dict file or Hugging Face folder), strictly.",
        ),
    )
    load_checkpoint: bool = arg(
        False,
        "Resume from the newest checkpoint in --ckpt_path.",
        roles=dict.fromkeys(
            ("evaluate_gcg", "evaluate_beast"),
            "Load --ckpt_path into the model (the fork needed both flags; --ckpt_path alone also loads).",
        ),
    )
    max_ckpt_num: int = arg(3, "Keep at most this many checkpoints (oldest deleted first).")
    save_steps: int = arg(-1, "Save a resumable checkpoint every N optimizer steps (-1: only at the end).")
    save_hf_ckpt: bool = arg(
        False,
        "Also write each checkpoint's model in Hugging Face format (global_stepN/final, loadable by transformers; "
        "a reward model's copy lacks the reward normalisation statistics, which are computed at the end). "
        "Always on for RL runs.",
    )

    def __post_init__(self) -> None:
        require(self.max_ckpt_num >= 1, f"--max_ckpt_num must be >= 1, got {self.max_ckpt_num}")
        require(bool(self.save_path.strip()), "--save_path must not be empty")
        require(self.ckpt_path is None or bool(self.ckpt_path.strip()), "--ckpt_path must not be empty")

    def checkpoint_dir(self) -> str:
        return self.ckpt_path or f"{self.save_path}/checkpoints"


@dataclass
class LoggingArgs:
    _argument_group_name = "logging and progress"

    logging_steps: int = arg(1, "Log metrics every N optimizer steps.")
    eval_steps: int = arg(-1, "Evaluate every N optimizer steps (-1: once per epoch, when an eval set exists).")
    use_wandb: str | None = arg(
        None,
        "Log to Weights & Biases: 'offline', or 'True'/an API key for online runs (a key is not written to "
        "config.yaml or the run; 'True' with WANDB_API_KEY keeps it off the command line too).",
    )
    wandb_project: str = arg("repulse", "Weights & Biases project.")
    wandb_run_name: str | None = arg(None, "Weights & Biases run name (default: the save_path folder name).")
    use_tensorboard: str | None = arg(None, "Write TensorBoard event files to this folder.")
    disable_progress_bar: bool = arg(False, "Hide the tqdm progress bar.")

    def __post_init__(self) -> None:
        require(self.logging_steps >= 1, f"--logging_steps must be >= 1, got {self.logging_steps}")
