"""train_sft: supervised fine-tuning of a causal LM.

Loss: mean next-token NLL over response tokens (prompt tokens masked), or over every token with
--pretrain_mode. --packing_samples packs a micro-batch into one row with block-diagonal attention, which
gives the same loss as padding. Runs on one CPU/GPU, or data-parallel under torchrun.

    repulse train_sft --save_path runs/sft --max_epochs 1            # embedded tiny LM + data
    repulse train_sft --pretrain HuggingFaceTB/SmolLM2-135M-Instruct --dataset data.jsonl \\
        --input_key prompt --output_key response --apply_chat_template --lora_rank 8 --save_path runs/sft
    torchrun --nproc_per_node 2 -m repulse.cli.train_sft --train_batch_size 16 --micro_train_batch_size 4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.parser import parse_groups
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


def parse_args(argv: Sequence[str] | None = None) -> SFTConfig:
    return SFTConfig(*parse_groups(GROUPS, argv, description=__doc__))


def build_datasets(cfg: SFTConfig, tokenizer):
    from repulse.data.loading import load_rows
    from repulse.data.sft import SFTDataset

    d = cfg.data
    # --pretrain_mode trains on input + output when the data has an output column, else on input alone.
    keys = [d.input_key] + ([d.output_key] if d.output_key and not cfg.sft.pretrain_mode else [])
    optional = [d.output_key] if d.output_key else []
    default = "pretrain" if cfg.sft.pretrain_mode else "sft"
    kwargs = dict(
        input_key=d.input_key,
        output_key=d.output_key,
        input_template=d.input_template,
        apply_chat_template=d.apply_chat_template,
        pretrain_mode=cfg.sft.pretrain_mode,
    )
    train = SFTDataset(
        load_rows(d, keys, default, seed=cfg.optim.seed, optional=optional), tokenizer, d.max_len, **kwargs
    )
    eval_rows = load_rows(d, keys, None, seed=cfg.optim.seed, eval_split=True, optional=optional)
    evaluation = SFTDataset(eval_rows, tokenizer, d.max_len, **kwargs) if eval_rows is not None else None
    return train, evaluation


def train(cfg: SFTConfig):
    from repulse.cli.training import start_run, train_and_save
    from repulse.data.collate import PackCollator, PadCollator
    from repulse.models.load import load_causal_lm
    from repulse.trainers.sft import SFTTrainer

    strategy, path, tokenizer = start_run(cfg)
    model = strategy.prepare(load_causal_lm(path, cfg.model, cfg.lora))
    train_set, eval_set = build_datasets(cfg, tokenizer)
    collate = (
        PackCollator(not cfg.model.flash_attn) if cfg.data.packing_samples else PadCollator(tokenizer.pad_token_id)
    )
    return train_and_save(
        cfg, strategy, SFTTrainer(model), tokenizer, train_set, collate, name="train_sft", eval_set=eval_set
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_sft")


if __name__ == "__main__":
    raise SystemExit(main())
