"""Hints for flags that are not ours: the names TRL / transformers TrainingArguments use, and near misses.

A TRL user's YAML (`output_dir`, `per_device_train_batch_size`, ...) or command line should be answered with the
flag that does the same thing here, not a bare "unknown flag".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Their name -> (our flag or flags, a note on how they differ; "" when they mean the same).
FOREIGN_NAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "output_dir": (("save_path",), ""),
    "model_name_or_path": (("pretrain",), ""),
    "dataset_name": (("dataset",), ""),
    "dataset_train_split": (("dataset_split",), ""),
    "dataset_test_split": (("eval_split",), "the split of --eval_dataset"),
    "dataset_text_field": (("input_key",), "with --pretrain_mode for plain text"),
    "per_device_train_batch_size": (("micro_train_batch_size",), ""),
    "per_device_eval_batch_size": (("micro_train_batch_size",), "evaluation uses the training micro-batch"),
    "gradient_accumulation_steps": (
        ("train_batch_size",),
        "accumulation = train_batch_size / (micro_train_batch_size x processes)",
    ),
    "num_train_epochs": (("max_epochs",), ""),
    "max_steps": (("max_epochs",), "runs are sized in epochs"),
    "warmup_ratio": (("lr_warmup_ratio",), ""),
    "lr_scheduler_type": (("lr_scheduler",), ""),
    "weight_decay": (("l2",), ""),
    "max_grad_norm": (("max_norm",), ""),
    "adam_beta1": (("adam_betas",), "two floats: --adam_betas 0.9 0.95"),
    "adam_beta2": (("adam_betas",), "two floats: --adam_betas 0.9 0.95"),
    "max_seq_length": (("max_len",), ""),
    "max_length": (("max_len",), ""),
    "max_prompt_length": (("prompt_max_len", "max_len"), ""),
    "max_completion_length": (("generate_max_len", "max_new_tokens"), ""),
    "packing": (("packing_samples",), ""),
    "save_total_limit": (("max_ckpt_num",), ""),
    "save_strategy": (("save_steps",), "-1 saves at the end only"),
    "eval_strategy": (("eval_steps",), "-1 evaluates once per epoch"),
    "evaluation_strategy": (("eval_steps",), "-1 evaluates once per epoch"),
    "resume_from_checkpoint": (("load_checkpoint",), "a switch; the folder is --ckpt_path"),
    "report_to": (("use_wandb", "use_tensorboard"), ""),
    "run_name": (("wandb_run_name",), ""),
    "logging_dir": (("use_tensorboard",), ""),
    "disable_tqdm": (("disable_progress_bar",), ""),
    "use_peft": (("lora_rank",), "LoRA is on when --lora_rank > 0"),
    "lora_r": (("lora_rank",), ""),
    "lora_target_modules": (("target_modules",), ""),
    "torch_dtype": (("bf16",), ""),
    "dtype": (("bf16",), ""),
    "attn_implementation": (("flash_attn",), ""),
    "loss_type": (("ipo", "loss"), "DPO: --ipo; reward models: --loss"),
    "desirable_weight": (("desirable_loss_weight",), ""),
    "undesirable_weight": (("undesirable_loss_weight",), ""),
    "rpo_alpha": (("nll_loss_coef",), ""),
    "ref_model_name_or_path": (("ref_pretrain",), ""),
    "teacher_model_name_or_path": (("teacher_model",), ""),
    "push_to_hub": ((), "nothing is uploaded; the model is saved under --save_path/final"),
}

# Flags of other commands that a command reads differently: name -> (its flags that do the job, how).
READ_OTHERWISE: dict[str, tuple[tuple[str, ...], str]] = {
    "input_key": (("prompt_key", "chosen_key", "rejected_key"), "preference pairs are read by"),
    "output_key": (("chosen_key", "rejected_key"), "preference pairs are read by"),
}


def flag_hint(name: str, known: Iterable[str]) -> str:
    """Where a name that is not a flag of this command points: TRL's name for one of ours, the closest flag, or ''."""
    known = set(known)
    if name in FOREIGN_NAMES:
        ours, note = FOREIGN_NAMES[name]
        present = [f"--{o}" for o in ours if o in known]
        if present:
            flags = " or ".join(present)
            return f"TRL's; here: {flags}, {note}" if note else f"TRL's name for {flags}"
        if not ours:
            return note
    if name in READ_OTHERWISE:
        ours, how = READ_OTHERWISE[name]
        present = [f"--{o}" for o in ours if o in known]
        if present:
            return f"not a flag here: {how} {', '.join(present)}"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"did you mean --{close[0]}?" if close else ""


def describe_unknown(names: Iterable[str], known: Iterable[str], prefix: str = "--") -> str:
    """'--a (TRL's name for --b), --c (did you mean --d?)' for names that are not flags of this command."""
    known = set(known)
    parts = []
    for name in names:
        hint = flag_hint(name, known)
        parts.append(f"{prefix}{name}" + (f" ({hint})" if hint else ""))
    return ", ".join(parts)
