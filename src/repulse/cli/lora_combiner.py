"""lora_combiner: merge a LoRA adapter into its base model and save a standalone Hugging Face folder.

The base is the model the adapter records in its adapter_config.json (--pretrain, or the fork's --model_path,
overrides it): a causal LM, or a reward model with --is_rm (its trained head and normalization are kept). Before
the output folder appears, the saved model is reloaded and checked against base + adapter on a probe batch; a
mismatch is an error (exit 2) and nothing is written. The tokenizer comes from the adapter folder when it holds
one (the training commands save it there; it must be the base's vocabulary), else from the base.

    repulse lora_combiner --lora_path runs/sft_lora/final --output_path runs/sft_merged     # base as recorded
    repulse lora_combiner --model_path HuggingFaceTB/SmolLM2-135M-Instruct --lora_path runs/sft/final \\
        --output_path runs/sft/merged
    repulse lora_combiner --is_rm --model_path runs/rm_base --lora_path runs/rm/final --output_path runs/rm/merged
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import ModelArgs
from repulse.config.inference import MergeArgs, check_merge
from repulse.config.output import OutputArgs
from repulse.config.parser import parse_groups


class MergeConfig(NamedTuple):
    model: ModelArgs
    merge: MergeArgs
    output: OutputArgs


GROUPS = (ModelArgs, MergeArgs, OutputArgs)
ONLY = {ModelArgs: ["pretrain", "bf16"], OutputArgs: ["output_path"]}
ALIASES = {"pretrain": ["--model_path"]}  # the fork's name for the base model


def parse_args(argv: Sequence[str] | None = None) -> MergeConfig:
    cfg = MergeConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY, aliases=ALIASES))
    check_merge(cfg.output)
    return cfg


def combine(cfg: MergeConfig):
    from repulse.models.merge import check_adapter_dir, choose_base, merge_lora

    m, out = cfg.merge, cfg.output.output_path
    adapter = check_adapter_dir(m.lora_path, m.is_rm)  # before any loading, so a wrong path fails at once
    base = choose_base(cfg.model.pretrain, adapter)
    report = merge_lora(base, m.lora_path, out, is_rm=m.is_rm, bf16=cfg.model.bf16)
    print(
        f"lora_combiner: merged {report.merged_modules} LoRA modules of {m.lora_path} into {base}; probe outputs "
        f"agree (max |diff| {report.max_abs_diff:.2g} <= {report.tolerance:.2g}); wrote {out}"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: combine(parse_args(a)), argv, "lora_combiner")


if __name__ == "__main__":
    raise SystemExit(main())
