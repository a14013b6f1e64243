"""The set-up and tear-down every training command shares: strategy, seed, tokenizer, fit, save, summary.

A command's config is a NamedTuple of flag groups with at least the fields
model, data, optim, strategy, ckpt and logging.
"""

from __future__ import annotations

from typing import Any

from repulse.cli.runner import write_resolved_config
from repulse.config.parser import to_flat_dict


def start_run(cfg: Any, default_model: str = "tiny_lm") -> tuple[Any, str, Any]:
    """(strategy, model path, tokenizer) with the seed set; the model path falls back to the embedded one."""
    from repulse.distributed.launch import make_strategy
    from repulse.infra.seed import set_seed
    from repulse.models.load import load_tokenizer, resolve_model_path

    strategy = make_strategy(cfg.strategy.dist_backend, cfg.strategy.zero_stage, cfg.strategy.adam_offload)
    set_seed(cfg.optim.seed)
    path = resolve_model_path(cfg.model.pretrain, default_model)
    tokenizer = load_tokenizer(
        path, use_fast=not cfg.model.disable_fast_tokenizer, chat_template=cfg.data.tokenizer_chat_template
    )
    return strategy, path, tokenizer


def train_and_save(
    cfg: Any,
    strategy: Any,
    trainer: Any,
    tokenizer: Any,
    train_set: Any,
    collate: Any,
    *,
    name: str,
    eval_set: Any = None,
    before_save: Any = None,
) -> Any:
    """Write config.yaml, run the loop, save `save_path/final` (HF format) and print a one-line summary."""
    from repulse.models.load import save_pretrained_atomic
    from repulse.trainers.session import build_run, fit

    flat = to_flat_dict(*cfg)
    if strategy.is_rank_0():
        write_resolved_config(cfg.ckpt.save_path, flat)
    run = build_run(
        trainer,
        strategy,
        train_set,
        collate,
        optim=cfg.optim,
        ckpt=cfg.ckpt,
        logging_args=cfg.logging,
        eval_set=eval_set,
        config=flat,
    )
    fit(run)
    if before_save is not None:
        before_save(run)
    if strategy.is_rank_0():
        final = save_pretrained_atomic(strategy.unwrap(trainer.model), tokenizer, f"{cfg.ckpt.save_path}/final")
        last = run.state.history[-1] if run.state.history else {}
        shown = " ".join(f"{k} {v:.4g}" for k, v in last.items() if k in SUMMARY_KEYS)
        print(f"{name}: {run.state.global_step} steps; last {shown}; model saved to {final}")
    strategy.cleanup()
    return run


SUMMARY_KEYS = ("loss", "acc", "reward_margin", "kl", "kd_loss", "nll_loss")
