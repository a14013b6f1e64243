"""The evaluations of a train_ppo run: exact P(bad) during training (--analytic_bad_word_calc), and
after it held-out sampling and the likelihood of known bad outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repulse.assets import bad_words
from repulse.config.evaluation import EvalArgs
from repulse.config.rollout import RolloutArgs
from repulse.data.prompts import format_prompts, load_prompt_texts
from repulse.estimation.exact import count_leaves, model_vocab_size
from repulse.evaluation import diagnostics as diag
from repulse.evaluation.bad_output import BadOutputSpec, exact_bad_output
from repulse.evaluation.diagnostics import ContinuationSpace
from repulse.evaluation.heldout import heldout_sampling
from repulse.evaluation.negative_data import negative_data_likelihood
from repulse.infra.errors import DataError
from repulse.rl.rewards import RewardSource
from repulse.rl.rollout import encode_prompts_left_truncated
from repulse.trainers.rl.config import RLConfig
from repulse.trainers.rl.models import RLModels

log = logging.getLogger("repulse")


def bad_output_spec(
    evaluation: EvalArgs, rollout: RolloutArgs, threshold: float, reward: RewardSource
) -> BadOutputSpec:
    """Bad = reward below --threshold (--analytic_by_threshold), else a bad word (--bad_words_file or embedded)."""
    if evaluation.analytic_by_threshold:
        return BadOutputSpec(
            rollout.custom_prompt, rollout.generate_max_len, reward_source=reward, threshold=threshold
        )
    words = Path(evaluation.bad_words_file).read_text().split() if evaluation.bad_words_file else bad_words()
    return BadOutputSpec(rollout.custom_prompt, rollout.generate_max_len, bad_words=words)


LEAF_LIMIT = 2_000_000  # responses the diagnostics enumerate and score at most (the embedded toy has 78,681)


class ExactEvaluator:
    """The exact evaluation of one run (--analytic_bad_word_calc) for --custom_prompt and --generate_max_len
    tokens, before training and after every fit step.

    P(bad) of the evaluated model (p_theta; q in twist learning) always. When the continuations can be enumerated
    (at most LEAF_LIMIT), also the diagnostics of evaluation/diagnostics.py: the space of continuations is built
    and scored by the reward source once, at the first evaluation, and each evaluation then re-enumerates the
    models' log-probabilities (one KV-cached pass each):
    - exact_entropy, exact_kl_to_reference (KL(p_theta || p_0)), exact_expected_reward (E_{p_theta}[r]);
    - with a proposal (RePULSe's q; p_theta itself with --use_base_as_proposal; q in twist learning) and its target
      sigma ∝ base x phi (base = p_theta, or p_0 in twist learning; phi the --rm_type potential at the beta of the
      step just run): exact_kl_target_to_proposal (KL(sigma || q)), exact_proposal_ess_fraction (the ESS of q's
      importance weights for sigma per sample, 1 / sum sigma^2 / q), exact_proposal_p_bad, exact_target_p_bad,
      exact_log_partition (log Z = log E_base[phi]) and target_beta.
    """

    def __init__(self, config: RLConfig, models: RLModels, tokenizer, beta_at: Callable[[int], float] | None) -> None:
        e, r = config.evaluation, config.rollout
        self.spec = bad_output_spec(e, r, config.reward.threshold, models.reward)
        self.models, self.tokenizer, self.beta_at, self.potential = models, tokenizer, beta_at, config.potential
        self.proposal = proposal_role(config)
        if self.proposal is not None and beta_at is None:
            raise ValueError("the proposal diagnostics need the target's beta at each step (beta_at)")
        self.target_is_reference = config.mode == "twist"
        model = models.evaluated
        leaves = count_leaves(model_vocab_size(model), r.generate_max_len, tokenizer.eos_token_id is not None)
        self.enumerable = leaves <= LEAF_LIMIT
        if not self.enumerable:
            log.warning(
                "exact evaluation: %d continuations of --custom_prompt are too many to score (at most %d): "
                "only P(bad) is computed, without the entropy, KL and proposal diagnostics",
                leaves,
                LEAF_LIMIT,
            )
        self.space: ContinuationSpace | None = None
        self.log_p0: torch.Tensor | None = None

    def __call__(self, fit_step: int, step: int) -> dict[str, Any]:
        """The evaluation after `step` RL steps (fit step `fit_step`; 0 before training)."""
        model = self.models.evaluated
        if not self.enumerable:
            result = exact_bad_output(model, self.tokenizer, self.spec)
            return {"fit_step": fit_step, "exact_log_p_bad": result["log_p_bad"], "exact_p_bad": result["p_bad"]}
        space = self.build_space()
        log_p = diag.leaf_log_probs(model, space)
        log_p_bad = float(torch.logsumexp(log_p[space.bad], 0)) if bool(space.bad.any()) else -math.inf
        policy = diag.policy_diagnostics(log_p, self.log_p0, space)
        out = {
            "fit_step": fit_step,
            "exact_log_p_bad": log_p_bad,
            "exact_p_bad": math.exp(log_p_bad),
            "exact_entropy": policy["entropy"],
            "exact_kl_to_reference": policy["kl_to_reference"],
            "exact_expected_reward": policy["expected_reward"],
        }
        if self.proposal is None:
            return out
        beta = self.beta_at(max(step - 1, 0))
        # The evaluated model is the proposal itself with --use_base_as_proposal and in twist learning.
        own = self.proposal == "policy" or self.target_is_reference
        log_q = log_p if own else diag.leaf_log_probs(self.models.proposal, space)
        base = self.log_p0 if self.target_is_reference else log_p
        found = diag.proposal_diagnostics(base, log_q, space, self.potential.log_phi(space.rewards, beta))
        return out | {"target_beta": beta} | {f"exact_{k}": v for k, v in found.items()}

    def build_space(self) -> ContinuationSpace:
        """Every continuation with its bad flag and reward (scored as the trainers score: the prompt as decoded
        from its ids), and p_0's log-probabilities; once per run."""
        if self.space is None:
            spec, tok = self.spec, self.tokenizer
            words = spec.bad_words or bad_words()
            space = diag.build_space(self.models.reference, tok, spec.prompt, spec.response_len, bad_words=words)
            prompt = tok.decode(space.prompt_ids.tolist(), skip_special_tokens=False)
            rewards = diag.leaf_rewards(self.models.reward, prompt, space.texts)
            bad = rewards < spec.threshold if spec.bad_words is None else space.bad
            self.space = dataclasses.replace(space, rewards=rewards, bad=bad)
            self.log_p0 = diag.leaf_log_probs(self.models.reference, self.space)
        return self.space


def proposal_role(config: RLConfig) -> str | None:
    """'q' (RePULSe's learned proposal, or q in twist learning), 'policy' (--use_base_as_proposal: p_theta's own
    samples serve as the proposal's), or None (no proposal: REINFORCE, PPO)."""
    if config.mode == "twist" or config.separate_proposal:
        return "q"
    if config.mode == "harmlessness" and config.harm.harmlessness_training_loss_type != "reinforce":
        return "policy"
    return None


def exact_evaluator(
    config: RLConfig, models: RLModels, tokenizer, beta_at: Callable[[int], float] | None = None
) -> ExactEvaluator | None:
    """(fit_step, step) -> the exact evaluation, or None without --analytic_bad_word_calc."""
    if not config.evaluation.analytic_bad_word_calc:
        return None
    return ExactEvaluator(config, models, tokenizer, beta_at)


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
