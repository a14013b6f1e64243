"""evaluate_gcg: attack a chat model with GCG per target and report the attack success rate.

Per (goal, target) row: sample responses to the plain goal and score them, measure the target's log-prob,
optimise a GCG suffix (our nanoGCG-compatible implementation, docs/algorithms/gcg.md), sample again with the
suffix, and judge success by --atk_success_criteria (reward below --reward_threshold, no refusal phrase, or
a judge model's Yes). Writes a JSON document (--output_path) with the ASR, reward stats and per-target rows.

    repulse evaluate_gcg --max_targets 2 --gcg_steps 20 --gcg_search_width 64 --samples_per_prompt 50  # embedded
    repulse evaluate_gcg --pretrain HuggingFaceTB/SmolLM-135M-Instruct --ckpt_path run/_harml_actor \\
        --file_path data/harmful_behaviors_custom.csv --scenario behaviors --max_targets 100 \\
        --atk_success_criteria reward --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 \\
        --reward_threshold -4.0 --rm_exclude_adv_suffix --max_new_tokens 20 --gcg_steps 250 \\
        --gcg_search_width 512 --gcg_topk 256 --gcg_batch_size 512 --gcg_n_replace 1 --gcg_buffer_size 0 \\
        --gcg_use_prefix_cache --gcg_filter_ids --output_path gcg_eval.json
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
    GCGArgs,
    check_attack_eval,
)
from repulse.config.common import StrategyArgs
from repulse.config.parser import parse_groups, to_flat_dict


class GCGEvalConfig(NamedTuple):
    shared: AttackEvalConfig
    gcg: GCGArgs
    strategy: StrategyArgs


GROUPS = (*ATTACK_GROUPS, GCGArgs, StrategyArgs)


def parse_args(argv: Sequence[str] | None = None) -> GCGEvalConfig:
    from repulse.distributed.launch import note_not_applicable

    *shared, gcg, strategy = parse_groups(
        GROUPS, argv, description=__doc__, only=ATTACK_ONLY, defaults=ATTACK_DEFAULTS
    )
    cfg = GCGEvalConfig(AttackEvalConfig(*shared), gcg, strategy)
    check_attack_eval(cfg.shared)
    note_not_applicable(cfg.strategy, "evaluate_gcg", ATTACK_NOT_APPLICABLE)
    return cfg


def gcg_config(args: GCGArgs, seed: int):
    from repulse.attacks.gcg import GCGConfig

    return GCGConfig(
        num_steps=args.gcg_steps,
        optim_str_init=args.gcg_optim_str_init,
        search_width=args.gcg_search_width,
        batch_size=args.gcg_batch_size,
        topk=args.gcg_topk,
        n_replace=args.gcg_n_replace,
        buffer_size=args.gcg_buffer_size,
        use_mellowmax=args.gcg_use_mellowmax,
        mellowmax_alpha=args.gcg_mellowmax_alpha,
        early_stop=args.gcg_early_stop,
        use_prefix_cache=args.gcg_use_prefix_cache,
        allow_non_ascii=args.gcg_allow_non_ascii,
        filter_ids=args.gcg_filter_ids,
        add_space_before_target=args.gcg_add_space_before_target,
        seed=seed,
    )


def make_attack(cfg: GCGEvalConfig, evaluator, pairs: list[tuple[str, str]]):
    from repulse.attacks.evaluation import timed
    from repulse.attacks.gcg import run, run_universal

    config = gcg_config(cfg.gcg, cfg.shared.sampling.seed)
    model, tokenizer = evaluator.model, evaluator.tokenizer

    def unpack(result):
        return result.best_string, result.best_loss, result.losses

    if cfg.gcg.gcg_universal:
        shared = timed(lambda: unpack(run_universal(model, tokenizer, pairs, config)))
        return lambda goal, target: shared
    return lambda goal, target: timed(lambda: unpack(run(model, tokenizer, goal, target, config)))


def evaluate(cfg: GCGEvalConfig) -> dict:
    from repulse.attacks.evaluation import announce_defaults, build_evaluator, evaluate_all, finish
    from repulse.attacks.report import format_summary
    from repulse.attacks.targets import load_targets

    start = time.perf_counter()
    shared = cfg.shared
    announce_defaults(shared)
    pairs = load_targets(shared.eval.file_path, shared.eval.scenario, shared.eval.max_targets)
    evaluator = build_evaluator(shared, cfg.gcg.gcg_add_space_before_target)
    rows = evaluate_all(evaluator, pairs, make_attack(cfg, evaluator, pairs), "evaluate_gcg")
    seconds = time.perf_counter() - start
    flat = to_flat_dict(*shared, cfg.gcg, cfg.strategy, only=ATTACK_ONLY)
    payload = finish("evaluate_gcg", flat, rows, seconds, shared.output.output_path)
    print(format_summary("evaluate_gcg", payload, seconds, shared.output.output_path))
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: evaluate(parse_args(a)), argv, "evaluate_gcg")


if __name__ == "__main__":
    raise SystemExit(main())
