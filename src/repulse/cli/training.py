"""The set-up and tear-down every training command shares: strategy, seed, tokenizer, fit, save, summary.

A command's config is a NamedTuple of flag groups with at least the fields
model, data, optim, strategy, ckpt and logging.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repulse.cli.runner import write_resolved_config
from repulse.config.common import DataArgs, ModelArgs
from repulse.config.parser import to_flat_dict

log = logging.getLogger("repulse")


def start_run(cfg: Any, default_model: str = "tiny_lm", *, sharded: bool = False) -> tuple[Any, str, Any]:
    """(strategy, model path, tokenizer) with the seed set; the model path falls back to the embedded one.

    Checks first what a run needs from the user's input: output folders it can write, a model folder with a
    tokenizer and readable weights, and a --max_len within the model's positions (capped, with a warning).
    `sharded`: the command trains through the loop's prepare_train, so DeepSpeed and FSDP2 can run it.
    """
    from repulse.distributed.launch import make_strategy
    from repulse.infra.seed import set_seed
    from repulse.models.load import load_tokenizer, resolve_model_path

    check_output_folders(cfg)
    strategy = make_strategy(cfg.strategy, sharded=sharded)
    set_seed(cfg.optim.seed)
    path = resolve_model_path(cfg.model.pretrain, default_model)
    tokenizer = load_tokenizer(
        path, use_fast=not cfg.model.disable_fast_tokenizer, chat_template=cfg.data.tokenizer_chat_template
    )
    cap_max_len(cfg, path)
    return strategy, path, tokenizer


def load_trained_lm(strategy: Any, path: str, cfg: Any):
    """The causal LM a command trains, loaded the way its strategy needs (ZeRO-3: each rank's shard only)."""
    from repulse.models.load import load_causal_lm

    with strategy.model_init(trainable=True, bf16=cfg.model.bf16):
        return load_causal_lm(path, cfg.model, cfg.lora)


def load_frozen_lm(strategy: Any, path: str, cfg: Any, *, offload: bool):
    """A frozen causal LM (reference, teacher) placed by the strategy: replicated on the device, on the CPU with
    `offload`, or sharded under ZeRO-3 and FSDP2."""
    from repulse.models.load import load_reference_lm

    with strategy.model_init(trainable=False, bf16=cfg.model.bf16, offload=offload):
        model = load_reference_lm(path, cfg.model, offload=offload, device=strategy.device)
    return strategy.prepare_frozen(model, offload=offload)


def check_output_folders(cfg: Any) -> None:
    from repulse.infra.files import check_output_folder

    ckpt = getattr(cfg, "ckpt", None)
    if ckpt is not None:
        check_output_folder(ckpt.save_path, "--save_path")
        if ckpt.ckpt_path:
            check_output_folder(ckpt.ckpt_path, "--ckpt_path")


def cap_max_len(cfg: Any, path: str) -> None:
    """Examples are truncated to --max_len tokens; a model with fewer positions cannot take that many (an
    index error deep in the embedding), so --max_len is lowered to the model's positions, and the log says so.
    The capped value is what config.yaml records."""
    from repulse.models.load import model_positions

    data = cfg.data
    if not isinstance(data, DataArgs):
        return
    limit = model_positions(path)
    if limit is not None and data.max_len > limit:
        log.warning(
            "--max_len %d is more than the %d positions of the model %s: examples are truncated to %d tokens",
            data.max_len,
            limit,
            path,
            limit,
        )
        data.max_len = limit


def packing_mode(data: DataArgs, model: ModelArgs) -> str | None:
    """--packing_samples for the commands that pack padded rows at the forward (models/packing.py): block-diagonal
    4-D attention, or restarting position ids alone under --flash_attn (as SFT's PackCollator)."""
    if not data.packing_samples:
        return None
    mode = "flash" if model.flash_attn else "4d"
    boundaries = "restarting position ids" if mode == "flash" else "a block-diagonal causal mask"
    log.info("--packing_samples: each micro-batch's rows run as one packed row (%s)", boundaries)
    return mode


def train_and_save(
    cfg: Any,
    strategy: Any,
    trainer: Any,
    tokenizer: Any,
    train_set: Any,
    collate: Any,
    *,
    name: str,
    only: Mapping[type, Sequence[str]] | None = None,
    eval_set: Any = None,
    before_save: Any = None,
) -> Any:
    """Write config.yaml (the command's flags: `only` as it parsed them), run the loop, save `save_path/final`
    (HF format) and print a one-line summary."""
    from repulse.trainers.session import build_run, fit

    def hf_copy(folder: Path) -> None:  # --save_hf_ckpt: each checkpoint also holds the model as final/ would
        strategy.save_pretrained(trainer.model, tokenizer, folder / "final")

    flat = to_flat_dict(*cfg, only=only)
    try:
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
            command=name,
            checkpoint_extra=hf_copy if cfg.ckpt.save_hf_ckpt else None,
            write_config=lambda: write_resolved_config(cfg.ckpt.save_path, flat) if strategy.is_rank_0() else None,
        )
        fit(run)
        if before_save is not None:
            before_save(run)
        final = strategy.save_pretrained(trainer.model, tokenizer, f"{cfg.ckpt.save_path}/final")
    except BaseException:
        strategy.cleanup(failed=True)  # a refused checkpoint, an interrupt: free the process group
        raise
    if strategy.is_rank_0():
        last = run.state.history[-1] if run.state.history else {}
        shown = " ".join(f"{k} {v:.4g}" for k, v in last.items() if k in SUMMARY_KEYS)
        print(f"{name}: {run.state.global_step} steps; last {shown}; model saved to {final}")
    strategy.cleanup()
    return run


SUMMARY_KEYS = ("loss", "acc", "reward_margin", "kl", "kd_loss", "nll_loss")
