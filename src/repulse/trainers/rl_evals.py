"""The evaluation passes after RL training: held-out sampling and negative-data likelihood (METHODS §6.2-6.3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from repulse.infra.errors import DataError

log = logging.getLogger("repulse")


def heldout_pass(cfg, model, reference, tokenizer, reward_source) -> dict[str, Any]:
    from repulse.data.prompts import format_prompts, load_prompt_texts
    from repulse.evaluation.heldout import heldout_sampling
    from repulse.rl.rollout import encode_prompts_left_truncated
    from repulse.trainers.rl_setup import sampling_params

    e, r = cfg.evaluation, cfg.rollout
    raw = load_prompt_texts(
        e.heldout_prompt_data,
        "1.0",
        key=e.heldout_input_key or r.input_key,
        split=e.heldout_prompt_split,
        seed=cfg.optim.seed,
        max_samples=r.max_samples,
        default_kind="heldout_prompts",
    )
    texts = format_prompts(raw, tokenizer, input_template=r.input_template, chat=r.apply_chat_template)
    ids = encode_prompts_left_truncated(tokenizer, texts, r.prompt_max_len)
    stats = heldout_sampling(
        model,
        reference,
        tokenizer,
        ids,
        reward_source,
        group_size=r.duplicate_rollout_batch_by,
        params=sampling_params(r),
        iters=e.sampling_iters,
        threshold=cfg.reward.threshold,
    )
    log.info(
        "held-out: reward mean %.4f, fraction below %.2f = %.3g (95%% CI %s) over %d samples",
        stats["reward_mean"],
        stats["threshold"],
        stats["fraction_below_threshold"],
        [round(x, 5) for x in stats["fraction_below_threshold_ci95"]],
        stats["n_samples"],
    )
    return stats


def load_negative_rows(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        from repulse.assets import default_dataset

        path = default_dataset("negative")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--neg_data_load_path {path}: no such file")
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if not rows or any("prompt" not in r or "response" not in r for r in rows):
        raise DataError(f"--neg_data_load_path {path}: expected JSON lines with 'prompt' and 'response'")
    return rows


def negative_data_pass(cfg, model, tokenizer) -> dict[str, Any]:
    from repulse.evaluation.negative_data import negative_data_likelihood

    result = negative_data_likelihood(
        model,
        tokenizer,
        load_negative_rows(cfg.evaluation.neg_data_load_path),
        max_len=cfg.rollout.prompt_max_len + cfg.rollout.generate_max_len,
    )
    log.info(
        "negative data: mean log-prob %.4f, mean per-prompt logsumexp %.4f over %d sequences",
        result["mean_logprob"],
        result["mean_over_prompts_of_logsumexp"],
        result["n_sequences"],
    )
    return result
