"""train_kd: knowledge distillation from a frozen teacher into a student.

loss = (1 - kd_coef) * SFT NLL + kd_coef * KL(p_teacher || p_student), both on the response tokens (every token
with --pretrain_mode). The teacher must share the student's vocabulary; --teacher_offload runs it on the CPU.

    repulse train_kd --pretrain student_dir --teacher_model teacher_dir --save_path runs/kd --kd_coef 0.4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import CheckpointArgs, DataArgs, LoggingArgs, LoraArgs, ModelArgs, OptimArgs, StrategyArgs
from repulse.config.kd import KDArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.sft import SFTArgs


class KDConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    sft: SFTArgs
    kd: KDArgs


GROUPS = (ModelArgs, LoraArgs, DataArgs, OptimArgs, StrategyArgs, CheckpointArgs, LoggingArgs, SFTArgs, KDArgs)
ONLY = {DataArgs: all_but(DataArgs, "label_key", "packing_samples")}


def parse_args(argv: Sequence[str] | None = None) -> KDConfig:
    return KDConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY))


def check_vocabularies(student, teacher, student_path: str, teacher_path: str) -> None:
    from repulse.infra.errors import UserError

    s, t = output_tokens(student), output_tokens(teacher)
    if s != t:
        raise UserError(
            f"--teacher_model {teacher_path} has {t} output tokens, the student {student_path} {s}: "
            "distillation needs the same vocabulary"
        )


def output_tokens(model) -> int:
    """Rows of the output head; under ZeRO-3 a rank holds a shard, and DeepSpeed keeps the full shape aside."""
    weight = model.get_output_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def train(cfg: KDConfig):
    from repulse.cli.training import load_frozen_lm, load_trained_lm, start_run, train_and_save
    from repulse.data.collate import PadCollator
    from repulse.data.sft import build_sft_datasets
    from repulse.models.load import resolve_model_path
    from repulse.trainers.kd import KDTrainer

    strategy, path, tokenizer = start_run(cfg, sharded=True)
    student = load_trained_lm(strategy, path, cfg)
    teacher_path = resolve_model_path(cfg.kd.teacher_model, what="teacher model")
    teacher = load_frozen_lm(strategy, teacher_path, cfg, offload=cfg.kd.teacher_offload)
    check_vocabularies(student, strategy.unwrap(teacher), path, teacher_path)
    train_set, eval_set = build_sft_datasets(
        cfg.data, tokenizer, pretrain_mode=cfg.sft.pretrain_mode, default="distill", seed=cfg.optim.seed
    )
    trainer = KDTrainer(student, teacher, cfg.kd.kd_coef)
    collate = PadCollator(tokenizer.pad_token_id)
    return train_and_save(
        cfg, strategy, trainer, tokenizer, train_set, collate, name="train_kd", only=ONLY, eval_set=eval_set
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_kd")


if __name__ == "__main__":
    raise SystemExit(main())
