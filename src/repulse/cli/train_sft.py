"""train_sft: supervised fine-tuning of a causal LM.

Loss: mean next-token NLL over response tokens (prompt tokens masked), or over every token with
--pretrain_mode. --packing_samples packs a micro-batch into one row with block-diagonal attention, which
gives the same loss as padding. Runs on one CPU/GPU, or over processes under torchrun or the deepspeed
launcher (--strategy: DeepSpeed ZeRO, FSDP2 or DDP).

    repulse train_sft --save_path runs/sft --train_batch_size 32 --micro_train_batch_size 16 \\
        --learning_rate 1e-3                                          # embedded tiny LM + data (300 rows)
    repulse train_sft --dataset chat.jsonl --save_path runs/chat      # TRL's {"messages": [...]} rows
    repulse train_sft --pretrain HuggingFaceTB/SmolLM2-135M-Instruct --dataset data.jsonl \\
        --input_key prompt --output_key response --apply_chat_template --lora_rank 8 --save_path runs/sft
    torchrun --nproc_per_node 2 -m repulse.cli.train_sft --train_batch_size 16 --micro_train_batch_size 4
    deepspeed --num_gpus 2 --module repulse.cli.train_sft --zero_stage 3 --train_batch_size 16 \\
        --micro_train_batch_size 4 --save_path runs/sft_zero3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.sft import SFTArgs


class SFTConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    sft: SFTArgs


GROUPS = (ModelArgs, LoraArgs, DataArgs, OptimArgs, StrategyArgs, CheckpointArgs, LoggingArgs, SFTArgs)
ONLY = {DataArgs: all_but(DataArgs, "label_key")}


def parse_args(argv: Sequence[str] | None = None) -> SFTConfig:
    return SFTConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY))


def build_datasets(cfg: SFTConfig, tokenizer):
    from repulse.data.sft import build_sft_datasets

    default = "pretrain" if cfg.sft.pretrain_mode else "sft"
    return build_sft_datasets(
        cfg.data, tokenizer, pretrain_mode=cfg.sft.pretrain_mode, default=default, seed=cfg.optim.seed
    )


def train(cfg: SFTConfig):
    from repulse.cli.training import load_trained_lm, start_run, train_and_save
    from repulse.data.collate import PackCollator, PadCollator
    from repulse.trainers.sft import SFTTrainer

    strategy, path, tokenizer = start_run(cfg, sharded=True)
    model = load_trained_lm(strategy, path, cfg)
    train_set, eval_set = build_datasets(cfg, tokenizer)
    collate = (
        PackCollator(not cfg.model.flash_attn) if cfg.data.packing_samples else PadCollator(tokenizer.pad_token_id)
    )
    trainer = SFTTrainer(model)
    return train_and_save(
        cfg, strategy, trainer, tokenizer, train_set, collate, name="train_sft", only=ONLY, eval_set=eval_set
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_sft")


if __name__ == "__main__":
    raise SystemExit(main())
