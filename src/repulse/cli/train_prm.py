"""train_prm: process reward model, a causal LM trained to predict a label token at each step marker.

Each input holds the steps of a solution with --placeholder_token after every step; --label_key holds one label
per step: a reward token (hard, e.g. "+"/"-") or the probability of the first reward token (soft). The loss is
the cross-entropy over the reward tokens at the marker positions only; `repulse.trainers.prm.step_rewards`
scores new texts.

    repulse train_prm --save_path runs/prm --learning_rate 1e-3 --train_batch_size 32 \\
        --micro_train_batch_size 16                                       # embedded tiny LM + step data
    repulse train_prm --pretrain model --dataset steps.jsonl --input_key input --label_key value \\
        --placeholder_token "ки" --reward_tokens + - --save_path runs/prm
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.prm import PRMArgs


class PRMConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    prm: PRMArgs


GROUPS = (ModelArgs, LoraArgs, DataArgs, OptimArgs, StrategyArgs, CheckpointArgs, LoggingArgs, PRMArgs)
# Step texts have no response column and no chat form.
ONLY = {DataArgs: all_but(DataArgs, "output_key", "apply_chat_template", "tokenizer_chat_template")}
DEFAULTS = {"label_key": "value"}


def parse_args(argv: Sequence[str] | None = None) -> PRMConfig:
    return PRMConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY, defaults=DEFAULTS))


def build_datasets(cfg: PRMConfig, tokenizer):
    from repulse.data.loading import load_rows
    from repulse.data.process_reward import ProcessRewardDataset

    d, p = cfg.data, cfg.prm
    keys = [d.input_key, d.label_key]
    kwargs = dict(
        input_key=d.input_key,
        label_key=d.label_key,
        placeholder_token=p.placeholder_token,
        reward_tokens=p.reward_tokens,
        input_template=d.input_template,
    )
    train = ProcessRewardDataset(load_rows(d, keys, "prm", seed=cfg.optim.seed), tokenizer, d.max_len, **kwargs)
    eval_rows = load_rows(d, keys, None, seed=cfg.optim.seed, eval_split=True)
    return train, (ProcessRewardDataset(eval_rows, tokenizer, d.max_len, **kwargs) if eval_rows is not None else None)


def train(cfg: PRMConfig):
    from repulse.cli.training import load_trained_lm, packing_mode, start_run, train_and_save
    from repulse.data.process_reward import ProcessRewardCollator
    from repulse.trainers.prm import PRMTrainer

    strategy, path, tokenizer = start_run(cfg, sharded=True)
    model = load_trained_lm(strategy, path, cfg)
    train_set, eval_set = build_datasets(cfg, tokenizer)
    trainer = PRMTrainer(model, train_set.label_ids, packing_mode(cfg.data, cfg.model))
    collate = ProcessRewardCollator(tokenizer.pad_token_id)
    return train_and_save(
        cfg, strategy, trainer, tokenizer, train_set, collate, name="train_prm", only=ONLY, eval_set=eval_set
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_prm")


if __name__ == "__main__":
    raise SystemExit(main())
