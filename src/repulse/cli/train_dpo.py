"""train_dpo: direct preference optimisation (sigmoid DPO, IPO with --ipo, cDPO with --label_smoothing).

The policy (--pretrain, optionally LoRA) is trained against a frozen reference (--ref_pretrain, default the
same model; --ref_offload keeps it on the CPU) on prompt/chosen/rejected pairs; chosen and rejected run
through the policy in one concatenated forward. Log-probabilities are summed over response tokens, as in
OpenRLHF (IPO included). --nll_loss_coef adds the token-averaged NLL of the chosen responses.

    repulse train_dpo --save_path runs/dpo --beta 0.1 --learning_rate 5e-4 --train_batch_size 32 \\
        --micro_train_batch_size 16                                       # embedded tiny LM + pairs
    repulse train_dpo --pretrain runs/sft/final --dataset pairs.jsonl --prompt_key prompt \\
        --chosen_key chosen --rejected_key rejected --beta 0.1 --lora_rank 8 --save_path runs/dpo
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.dpo import DPOArgs
from repulse.config.fields import require
from repulse.config.parser import all_but, parse_groups
from repulse.config.preference import PreferenceKeys
from repulse.config.reference import ReferenceArgs


class DPOConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    keys: PreferenceKeys
    ref: ReferenceArgs
    dpo: DPOArgs


GROUPS = (
    ModelArgs,
    LoraArgs,
    DataArgs,
    OptimArgs,
    StrategyArgs,
    CheckpointArgs,
    LoggingArgs,
    PreferenceKeys,
    ReferenceArgs,
    DPOArgs,
)
# Pairs are read by the preference keys.
ONLY = {DataArgs: all_but(DataArgs, "input_key", "output_key", "label_key")}


def parse_args(argv: Sequence[str] | None = None) -> DPOConfig:
    cfg = DPOConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY))
    require(cfg.keys.margin_key is None, "--margin_key: the DPO loss has no margin term (it is a reward-model flag)")
    return cfg


def train(cfg: DPOConfig):
    from repulse.cli.training import load_frozen_lm, load_trained_lm, packing_mode, start_run, train_and_save
    from repulse.data.preference import PairCollator, build_preference_datasets
    from repulse.trainers.dpo import DPOTrainer

    strategy, path, tokenizer = start_run(cfg, sharded=True)
    model = load_trained_lm(strategy, path, cfg)
    reference = load_frozen_lm(strategy, cfg.ref.ref_pretrain or path, cfg, offload=cfg.ref.ref_offload)
    train_set, eval_set = build_preference_datasets(cfg.data, cfg.keys, tokenizer, seed=cfg.optim.seed)
    d = cfg.dpo
    packing = packing_mode(cfg.data, cfg.model)
    trainer = DPOTrainer(model, reference, cfg.ref.beta, d.label_smoothing, d.ipo, d.nll_loss_coef, packing)
    collate = PairCollator(tokenizer.pad_token_id)
    return train_and_save(
        cfg, strategy, trainer, tokenizer, train_set, collate, name="train_dpo", only=ONLY, eval_set=eval_set
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_dpo")


if __name__ == "__main__":
    raise SystemExit(main())
