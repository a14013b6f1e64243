"""evaluate_beast: attack a chat model with BEAST per target and report the attack success rate.

BEAST (Sadasivan et al. 2024) grows a readable suffix by beam search over tokens sampled from the attacked
model itself (docs/algorithms/beast.md). The evaluation around it is evaluate_gcg's: samples and rewards
before and after, target log-probs, success by --atk_success_criteria, and a JSON document (--output_path).

    repulse evaluate_beast --max_targets 2 --beast_k1 4 --beast_k2 4 --beast_length 8 --samples_per_prompt 50
    repulse evaluate_beast --pretrain HuggingFaceTB/SmolLM-135M-Instruct --file_path harmful_behaviors.csv \\
        --max_targets 100 --beast_k1 15 --beast_k2 15 --beast_length 40 --atk_success_criteria prefix \\
        --output_path beast_eval.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.attack import (
    ATTACK_DEFAULTS,
    ATTACK_GROUPS,
    ATTACK_NOT_APPLICABLE,
    ATTACK_ONLY,
    AttackEvalConfig,
    BEASTArgs,
    check_attack_eval,
)
from repulse.config.common import StrategyArgs
from repulse.config.parser import parse_groups, to_flat_dict


class BEASTEvalConfig(NamedTuple):
    shared: AttackEvalConfig
    beast: BEASTArgs
    strategy: StrategyArgs


GROUPS = (*ATTACK_GROUPS, BEASTArgs, StrategyArgs)


def parse_args(argv: Sequence[str] | None = None) -> BEASTEvalConfig:
    from repulse.distributed.launch import note_not_applicable

    *shared, beast, strategy = parse_groups(
        GROUPS, argv, description=__doc__, only=ATTACK_ONLY, defaults=ATTACK_DEFAULTS
    )
    cfg = BEASTEvalConfig(AttackEvalConfig(*shared), beast, strategy)
    check_attack_eval(cfg.shared)
    note_not_applicable(cfg.strategy, "evaluate_beast", ATTACK_NOT_APPLICABLE)
    return cfg


def beast_config(args: BEASTArgs, seed: int):
    from repulse.attacks.beast import BEASTConfig

    return BEASTConfig(
        k1=args.beast_k1,
        k2=args.beast_k2,
        length=args.beast_length,
        ngram=args.beast_ngram,
        temperature=args.beast_temperature,
        top_p=args.beast_top_p,
        batch_size=args.beast_batch_size,
        seed=seed,
    )


def make_attack(cfg: BEASTEvalConfig, evaluator):
    from repulse.attacks.beast import run_beast
    from repulse.attacks.evaluation import timed

    config = beast_config(cfg.beast, cfg.shared.sampling.seed)

    def attack(goal: str, target: str):
        result = timed(lambda: unpack(run_beast(evaluator.model, evaluator.tokenizer, goal, target, config)))
        return result

    def unpack(result):
        return result.best_string, result.best_loss, result.losses

    return attack


def evaluate(cfg: BEASTEvalConfig) -> dict:
    from repulse.attacks.evaluation import announce_defaults, build_evaluator, evaluate_all, finish
    from repulse.attacks.report import format_summary
    from repulse.attacks.targets import load_targets

    start = time.perf_counter()
    shared = cfg.shared
    announce_defaults(shared)
    pairs = load_targets(shared.eval.file_path, shared.eval.scenario, shared.eval.max_targets)
    evaluator = build_evaluator(shared)
    rows = evaluate_all(evaluator, pairs, make_attack(cfg, evaluator), "evaluate_beast")
    seconds = time.perf_counter() - start
    flat = to_flat_dict(*shared, cfg.beast, cfg.strategy, only=ATTACK_ONLY)
    payload = finish("evaluate_beast", flat, rows, seconds, shared.output.output_path)
    print(format_summary("evaluate_beast", payload, seconds, shared.output.output_path))
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: evaluate(parse_args(a)), argv, "evaluate_beast")


if __name__ == "__main__":
    raise SystemExit(main())
