"""The evaluations of a train_ppo run (METHODS §6): exact P(bad) during training (--analytic_bad_word_calc), and
after it held-out sampling and the likelihood of known bad outputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repulse.config.evaluation import EvalArgs
from repulse.config.rollout import RolloutArgs
from repulse.data.prompts import format_prompts, load_prompt_texts
from repulse.evaluation.bad_output import BadOutputSpec, exact_bad_output
from repulse.evaluation.heldout import heldout_sampling
from repulse.evaluation.negative_data import negative_data_likelihood
from repulse.infra.errors import DataError
from repulse.rl.rewards import RewardSource
from repulse.rl.rollout import encode_prompts_left_truncated
from repulse.trainers.rl.config import RLConfig

log = logging.getLogger("repulse")


def bad_output_spec(
    evaluation: EvalArgs, rollout: RolloutArgs, threshold: float, reward: RewardSource
) -> BadOutputSpec:
    """Bad = reward below --threshold (--analytic_by_threshold), else a bad word (--bad_words_file or embedded)."""
    from repulse.assets import bad_words

    if evaluation.analytic_by_threshold:
        return BadOutputSpec(
            rollout.custom_prompt, rollout.generate_max_len, reward_source=reward, threshold=threshold
        )
    words = Path(evaluation.bad_words_file).read_text().split() if evaluation.bad_words_file else bad_words()
    return BadOutputSpec(rollout.custom_prompt, rollout.generate_max_len, bad_words=words)


def exact_evaluator(config: RLConfig, model, tokenizer, reward: RewardSource) -> Callable[[int], dict] | None:
    """fit_step -> exact P(bad) of `model` for --custom_prompt, or None without --analytic_bad_word_calc."""
    if not config.evaluation.analytic_bad_word_calc:
        return None
    spec = bad_output_spec(config.evaluation, config.rollout, config.reward.threshold, reward)

    def evaluate(fit_step: int) -> dict[str, Any]:
        result = exact_bad_output(model, tokenizer, spec)
        return {"fit_step": fit_step, "exact_log_p_bad": result["log_p_bad"], "exact_p_bad": result["p_bad"]}

    return evaluate


def heldout_pass(
    config: RLConfig, model, reference, tokenizer, reward: RewardSource, others_running=None
) -> dict[str, Any]:
    e, r = config.evaluation, config.rollout
    raw = load_prompt_texts(
        e.heldout_prompt_data,
        "1.0",
        key=e.heldout_input_key or r.input_key,
        split=e.heldout_prompt_split,
        seed=config.optim.seed,
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
        reward,
        group_size=r.duplicate_rollout_batch_by,
        params=config.sampling,
        iters=e.sampling_iters,
        threshold=config.reward.threshold,
        others_running=others_running,
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


def negative_data_pass(evaluation: EvalArgs, rollout: RolloutArgs, model, tokenizer) -> dict[str, Any]:
    result = negative_data_likelihood(
        model,
        tokenizer,
        load_negative_rows(evaluation.neg_data_load_path),
        max_len=rollout.prompt_max_len + rollout.generate_max_len,
    )
    log.info(
        "negative data: mean log-prob %.4f, mean per-prompt logsumexp %.4f over %d sequences",
        result["mean_logprob"],
        result["mean_over_prompts_of_logsumexp"],
        result["n_sequences"],
    )
    return result


def post_training_evaluations(
    config: RLConfig, model, reference, tokenizer, reward: RewardSource, others_running=None
) -> dict[str, Any]:
    """--evaluate_heldout_sampling and --evaluate_on_neg_data, after training (on every rank: `others_running`
    is the sampler's lock-step where a forward is a collective)."""
    out: dict[str, Any] = {}
    if config.evaluation.evaluate_heldout_sampling:
        out["heldout"] = heldout_pass(config, model, reference, tokenizer, reward, others_running)
    if config.evaluation.evaluate_on_neg_data:
        out["negative_data"] = negative_data_pass(config.evaluation, config.rollout, model, tokenizer)
    return out
