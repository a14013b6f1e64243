"""train_rm: pairwise reward model (Bradley-Terry sigmoid or log-exp loss).

The model is a transformers sequence-regression model (one output) whose head (`--value_head_prefix`) is read
at each text's last token; from a causal-LM folder the head starts new. With --normalize_reward the mean and
std of the training rewards are stored in the saved config and applied by every consumer. In plain transformers
a text scores as trained only with the tokenizer's EOS appended and (with --normalize_reward) after
(r - mean) / std; `repulse.models.reward.score_texts(path, texts)` does both.

    repulse train_rm --save_path runs/rm --train_batch_size 32 --micro_train_batch_size 16 \\
        --learning_rate 1e-3 --normalize_reward                           # embedded tiny LM + pairs
    repulse train_rm --pretrain runs/sft/final --dataset pairs.jsonl --prompt_key prompt \\
        --chosen_key chosen --rejected_key rejected --loss sigmoid --normalize_reward --save_path runs/rm
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.preference import PreferenceKeys
from repulse.config.reward import RewardArgs
from repulse.config.rm import RMArgs


class RMConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    keys: PreferenceKeys
    reward: RewardArgs
    rm: RMArgs


GROUPS = (
    ModelArgs,
    LoraArgs,
    DataArgs,
    OptimArgs,
    StrategyArgs,
    CheckpointArgs,
    LoggingArgs,
    PreferenceKeys,
    RewardArgs,
    RMArgs,
)
# Pairs are read by the preference keys.
ONLY = {
    DataArgs: all_but(DataArgs, "input_key", "output_key", "label_key"),
    RewardArgs: ["value_head_prefix", "normalize_reward"],
}


def parse_args(argv: Sequence[str] | None = None) -> RMConfig:
    return RMConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY))


def build_datasets(cfg: RMConfig, tokenizer):
    from repulse.data.preference import build_preference_datasets

    return build_preference_datasets(cfg.data, cfg.keys, tokenizer, seed=cfg.optim.seed)


def store_normalization(trainer, strategy, dataset, collate, batch_size: int) -> None:
    """Mean/std of the rewards over the training texts (all ranks), written into the model config."""
    import torch

    from repulse.models.reward import store_reward_normalization

    trainer.model.eval()
    loader = strategy.eval_dataloader(dataset, batch_size, collate)
    with torch.no_grad():
        rewards = trainer.collect_rewards(loader, repeated=loader.batch_sampler.padding)
    stats = strategy.all_reduce(
        {"sum": rewards.sum().item(), "sq": (rewards**2).sum().item(), "n": len(rewards)}, op="sum"
    )
    mean = stats["sum"] / stats["n"]
    std = max(stats["sq"] / stats["n"] - mean**2, 0.0) ** 0.5
    store_reward_normalization(strategy.unwrap(trainer.model), mean, std)


def train(cfg: RMConfig):
    from repulse.cli.training import packing_mode, start_run, train_and_save
    from repulse.data.preference import PairCollator
    from repulse.models.reward import load_reward_model
    from repulse.trainers.rm import RewardModelTrainer

    strategy, path, tokenizer = start_run(cfg, sharded=True)
    with strategy.model_init(trainable=True, bf16=cfg.model.bf16):
        model = load_reward_model(
            path, cfg.model, cfg.lora, value_head_prefix=cfg.reward.value_head_prefix, trainable=True
        )
    train_set, eval_set = build_datasets(cfg, tokenizer)
    collate = PairCollator(tokenizer.pad_token_id)
    packing = packing_mode(cfg.data, cfg.model)
    trainer = RewardModelTrainer(model, cfg.rm.loss, cfg.reward.value_head_prefix, packing)

    def normalize(run) -> None:
        if cfg.reward.normalize_reward:
            store_normalization(trainer, strategy, train_set, collate, cfg.optim.micro_train_batch_size)

    return train_and_save(
        cfg,
        strategy,
        trainer,
        tokenizer,
        train_set,
        collate,
        name="train_rm",
        only=ONLY,
        eval_set=eval_set,
        before_save=normalize,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_rm")


if __name__ == "__main__":
    raise SystemExit(main())
