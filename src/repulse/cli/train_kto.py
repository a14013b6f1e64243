"""train_kto: Kahneman-Tversky optimisation on unpaired examples labelled desirable / undesirable.

Loss per example (r = log pi(y|x) - log ref(y|x), summed over response tokens): desirable
lambda_D (1 - sigmoid(beta (r - z0))), undesirable lambda_U (1 - sigmoid(beta (z0 - r))), where the reference
point z0 = max(0, mean log pi/ref) is estimated without gradient on mismatched (prompt_i, response_{i+1}) pairs
of the same micro-batch, as in the KTO paper. Under torchrun z0 is per process (not all-reduced).

    repulse train_kto --save_path runs/kto --beta 0.1 --learning_rate 5e-4 --train_batch_size 32 \\
        --micro_train_batch_size 16                                       # embedded tiny LM + labelled data
    repulse train_kto --pretrain runs/sft/final --dataset unpaired.jsonl --input_key prompt \\
        --output_key completion --label_key label --desirable_loss_weight 1 --undesirable_loss_weight 1.33
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.kto import KTOArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.reference import ReferenceArgs


class KTOConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    ref: ReferenceArgs
    kto: KTOArgs


GROUPS = (ModelArgs, LoraArgs, DataArgs, OptimArgs, StrategyArgs, CheckpointArgs, LoggingArgs, ReferenceArgs, KTOArgs)
ONLY = {DataArgs: all_but(DataArgs, "packing_samples")}


def parse_args(argv: Sequence[str] | None = None) -> KTOConfig:
    return KTOConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY))


def build_datasets(cfg: KTOConfig, tokenizer):
    from repulse.data.loading import load_rows
    from repulse.data.unpaired import UnpairedDataset
    from repulse.infra.errors import UserError

    d = cfg.data
    if not d.output_key:
        raise UserError("train_kto needs --output_key (the response column)")
    keys = [d.input_key, d.output_key, d.label_key]
    kwargs = dict(
        input_key=d.input_key,
        output_key=d.output_key,
        label_key=d.label_key,
        input_template=d.input_template,
        apply_chat_template=d.apply_chat_template,
    )
    train = UnpairedDataset(load_rows(d, keys, "unpaired", seed=cfg.optim.seed), tokenizer, d.max_len, **kwargs)
    eval_rows = load_rows(d, keys, None, seed=cfg.optim.seed, eval_split=True)
    return train, (UnpairedDataset(eval_rows, tokenizer, d.max_len, **kwargs) if eval_rows is not None else None)


def train(cfg: KTOConfig):
    from repulse.cli.training import load_frozen_lm, load_trained_lm, start_run, train_and_save
    from repulse.data.unpaired import UnpairedCollator
    from repulse.trainers.kto import KTOTrainer

    strategy, path, tokenizer = start_run(cfg, sharded=True)
    model = load_trained_lm(strategy, path, cfg)
    reference = load_frozen_lm(strategy, cfg.ref.ref_pretrain or path, cfg, offload=cfg.ref.ref_offload)
    train_set, eval_set = build_datasets(cfg, tokenizer)
    k = cfg.kto
    trainer = KTOTrainer(model, reference, cfg.ref.beta, k.desirable_loss_weight, k.undesirable_loss_weight)
    collate = UnpairedCollator(tokenizer.pad_token_id, cfg.data.max_len)
    return train_and_save(
        cfg, strategy, trainer, tokenizer, train_set, collate, name="train_kto", only=ONLY, eval_set=eval_set
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_kto")


if __name__ == "__main__":
    raise SystemExit(main())
