"""The whole train_ppo run: models, prompts, trainer, evaluation passes, checkpoints, outputs.

Outputs under --save_path: config.yaml, metrics.jsonl (one row per step and per evaluation), final/ (p_theta
in harmlessness mode, else the actor), final_proposal/ (q; in twist learning with a modulation_* proposal the only
model written, as the base p_0 does not change), final_critic/, summary.json, evaluations.json, and negdata.jsonl
with --save_negdata.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from repulse.config.validate import separate_proposal
from repulse.evaluation.bad_output import BadOutputSpec, exact_bad_output
from repulse.infra.files import write_json_atomic, write_jsonl_atomic
from repulse.infra.metrics import MetricLogger
from repulse.models.load import load_causal_lm, load_reference_lm, save_pretrained_atomic
from repulse.rl.rollout import encode_prompts_left_truncated
from repulse.trainers.rl_loop import RLLoopSettings, RLLoopState, run_rl_loop

log = logging.getLogger("repulse")


def load_models(cfg, path: str, strategy) -> dict[str, Any]:
    """p_theta / actor, frozen p_0, and (by mode) the proposal q or the critic."""
    from repulse.models.proposal import is_modulation
    from repulse.trainers.rl_setup import build_modulated_proposal

    lora, device = cfg.lora, strategy.device
    models: dict[str, Any] = {"initial": load_reference_lm(path, cfg.model, offload=False, device=device)}
    modulated = is_modulation(cfg.proposal.parameterization)
    if modulated and not cfg.harm.do_harmlessness_training:
        # Twist learning: q = p_0 e^m modulates the frozen p_0 itself, so no trainable LM copy is loaded.
        models["actor"] = strategy.prepare(build_modulated_proposal(cfg, path, models["initial"]))
        return models
    main = strategy.prepare(load_causal_lm(path, cfg.model, lora))
    if cfg.harm.do_harmlessness_training:
        models["base"] = main
        if separate_proposal(cfg.harm):
            if modulated:  # q = p_theta e^m tracks the current p_theta (METHODS §4.1)
                q = build_modulated_proposal(cfg, path, strategy.unwrap(main))
            else:
                q = load_causal_lm(path, cfg.model, lora, trainable=cfg.optim.actor_learning_rate > 0)
            models["proposal"] = strategy.prepare(q)
        return models
    models["actor"] = main
    if cfg.proposal.actor_loss_type == "ppo" and not cfg.ppo.no_critic:
        from repulse.models.reward import load_reward_model

        critic = load_reward_model(
            cfg.ppo.critic_pretrain or path,
            cfg.model,
            lora,
            value_head_prefix=cfg.reward.value_head_prefix,
            trainable=True,
        )
        models["critic"] = strategy.prepare(critic)
    if cfg.ppo.enable_ema:
        import copy

        models["ema"] = copy.deepcopy(strategy.unwrap(main)).to("cpu").requires_grad_(False)
    return models


def load_prompt_ids(cfg, tokenizer) -> list[list[int]]:
    from repulse.data.prompts import format_prompts, load_prompt_texts

    r = cfg.rollout
    if r.new_custom_single_prompt:
        texts = [r.custom_prompt]
    else:
        raw = load_prompt_texts(
            r.prompt_data,
            r.prompt_data_probs,
            key=r.input_key,
            split=r.prompt_split,
            seed=cfg.optim.seed,
            max_samples=r.max_samples,
        )
        texts = format_prompts(raw, tokenizer, input_template=r.input_template, chat=r.apply_chat_template)
    return encode_prompts_left_truncated(tokenizer, texts, r.prompt_max_len)


def bad_output_spec(cfg, reward_source) -> BadOutputSpec:
    from repulse.assets import bad_words

    e, r = cfg.evaluation, cfg.rollout
    if e.analytic_by_threshold:
        return BadOutputSpec(
            r.custom_prompt, r.generate_max_len, reward_source=reward_source, threshold=cfg.reward.threshold
        )
    words = Path(e.bad_words_file).read_text().split() if e.bad_words_file else bad_words()
    return BadOutputSpec(r.custom_prompt, r.generate_max_len, bad_words=words)


def make_evaluator(cfg, model, tokenizer, reward_source):
    if not cfg.evaluation.analytic_bad_word_calc:
        return None
    spec = bad_output_spec(cfg, reward_source)

    def evaluate(fit_step: int) -> dict[str, Any]:
        result = exact_bad_output(model, tokenizer, spec)
        return {"fit_step": fit_step, "exact_log_p_bad": result["log_p_bad"], "exact_p_bad": result["p_bad"]}

    return evaluate


def build_trainer(cfg, models, reward_source, tokenizer, strategy, total_steps: int):
    from repulse.trainers import rl_setup

    if cfg.harm.do_harmlessness_training:
        trainer = rl_setup.build_harmlessness_trainer(cfg, models, reward_source, tokenizer, strategy, total_steps)
        return rl_setup.AnnealedTrainer(trainer, cfg.harm, trainer.update.beta, total_steps)
    if cfg.proposal.is_twist_loss:
        return rl_setup.build_twist_trainer(cfg, models, reward_source, tokenizer, strategy, total_steps)
    ptx = ptx_batches(cfg, tokenizer, strategy.device) if cfg.ppo.pretrain_data else None
    return rl_setup.build_ppo_trainer(cfg, models, reward_source, tokenizer, strategy, total_steps, ptx)


def ptx_batches(cfg, tokenizer, device):
    """An endless iterator of pre-training batches (full-sequence LM loss) for the PPO-ptx term."""
    from repulse.data.collate import PadCollator
    from repulse.data.loading import blend_datasets
    from repulse.data.sft import SFTDataset

    key = cfg.ppo.pretrain_input_key
    rows = blend_datasets(
        cfg.ppo.pretrain_data.split(","),
        [1.0 / len(cfg.ppo.pretrain_data.split(","))] * len(cfg.ppo.pretrain_data.split(",")),
        [key],
        seed=cfg.optim.seed,
    )
    data = SFTDataset(rows, tokenizer, cfg.rollout.prompt_max_len, input_key=key, output_key=None, pretrain_mode=True)
    collate, size = PadCollator(tokenizer.pad_token_id), cfg.optim.micro_train_batch_size
    gen = torch.Generator().manual_seed(cfg.optim.seed)
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for i in range(0, len(order), size):
            batch = collate([data[j] for j in order[i : i + size]])
            yield {k: v.to(device) for k, v in batch.items()}


def loop_settings(cfg, n_prompts: int) -> RLLoopSettings:
    per_step = max(1, cfg.rollout.rollout_batch_size)
    episodes = (
        cfg.harm.harmlessness_training_num_episodes * cfg.harm.harmlessness_training_episodes_per_loop
        if cfg.harm.do_harmlessness_training
        else cfg.rollout.num_episodes
    )
    save_steps = cfg.harm.save_steps_harmless if cfg.harm.do_harmlessness_training else cfg.ckpt.save_steps
    lg = cfg.logging
    return RLLoopSettings(
        episodes=episodes,
        prompts_per_step=min(per_step, n_prompts),
        fit_steps=cfg.ppo.fit_steps,
        logging_steps=lg.logging_steps,
        save_steps=save_steps,
        seed=cfg.optim.seed,
        eval_steps=lg.eval_steps,
        progress=not lg.disable_progress_bar,
    )


def save_models(cfg, models: dict[str, Any], tokenizer, strategy, folder: str) -> None:
    from repulse.models.modulated import is_modulated

    main = models.get("base") or models.get("actor")
    # A modulated actor (twist learning) is a head on the unchanged p_0, so it is a proposal, not a new final/ LM.
    save_pretrained_atomic(
        strategy.unwrap(main), tokenizer, f"{folder}/final_proposal" if is_modulated(main) else f"{folder}/final"
    )
    for key, name in (("proposal", "final_proposal"), ("critic", "final_critic"), ("ema", "final_ema")):
        if models.get(key) is not None:
            save_pretrained_atomic(strategy.unwrap(models[key]), tokenizer, f"{folder}/{name}")


def summarize(state, trainer) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    evals = state.evaluations
    summary = {
        "steps": state.global_step,
        "reward_mean_final": last.get("reward_mean"),
        "samples_used": getattr(getattr(trainer, "trainer", trainer), "samples_used", None),
    }
    if evals:
        summary["exact_log_p_bad_initial"] = evals[0]["exact_log_p_bad"]
        summary["exact_log_p_bad_final"] = evals[-1]["exact_log_p_bad"]
        summary["exact_log10_p_bad_final"] = evals[-1]["exact_log_p_bad"] / math.log(10)
    return summary


TRAINED = ("actor", "base", "proposal", "critic")


def run_kind(cfg, models: dict[str, Any]) -> dict[str, Any]:
    """What must match for a checkpoint to fit this run: the models, the losses and the parameterization."""
    harm, prop = cfg.harm, cfg.proposal
    return {
        "models": sorted(models),
        "do_harmlessness_training": harm.do_harmlessness_training,
        "harmlessness_training_loss_type": harm.harmlessness_training_loss_type
        if harm.do_harmlessness_training
        else None,
        "actor_loss_type": prop.actor_loss_type,
        "parameterization": prop.parameterization,
        "lora_rank": cfg.lora.lora_rank,
    }


def checkpoint_state(cfg, models, trainer, state: RLLoopState, negdata, strategy) -> dict[str, Any]:
    """Everything a resumed run needs besides the RNG (the Checkpointer adds that)."""
    from repulse.infra.checkpoint import trainable_state

    weights = {k: trainable_state(strategy.unwrap(models[k])) for k in TRAINED if models.get(k) is not None}
    if models.get("ema") is not None:  # frozen (requires_grad off), so its whole state is the trained part
        weights["ema"] = {k: v.detach().clone() for k, v in models["ema"].state_dict().items()}
    return {
        "kind": run_kind(cfg, models),
        "weights": weights,
        "trainer": trainer.state_dict(),
        "loop": dataclasses.asdict(state),
        "negdata": negdata.rows if negdata is not None else None,
    }


def resume_run(cfg, checkpointer, models, trainer, negdata, strategy) -> RLLoopState | None:
    """Load the newest checkpoint into the models and the trainer and restore the RNG; its loop state, or None
    when there is no checkpoint yet (the run starts from scratch)."""
    from repulse.infra.checkpoint import load_trainable_state
    from repulse.infra.errors import UserError

    path = checkpointer.latest()
    if path is None:
        log.info("--load_checkpoint: no checkpoint in %s, starting from scratch", checkpointer.dir)
        return None
    if not (path / "training_state.pt").exists():
        raise UserError(f"--load_checkpoint: {path} holds no training state (written before train_ppo could resume)")
    saved = checkpointer.load(path)
    expected = run_kind(cfg, models)
    for key, value in expected.items():
        if saved["kind"].get(key) != value:
            raise UserError(
                f"--load_checkpoint: {path} comes from a different configuration ({key} was "
                f"{saved['kind'].get(key)!r}, now {value!r}); use another --ckpt_path"
            )
    for key, weights in saved["weights"].items():
        if key == "ema":
            models["ema"].load_state_dict(weights)
        else:
            load_trainable_state(strategy.unwrap(models[key]), weights)
    trainer.load_state_dict(saved["trainer"])
    if negdata is not None and saved["negdata"] is not None:
        negdata.rows = saved["negdata"]
        negdata.seen = {(r["prompt"], r["response"]) for r in negdata.rows}
    state = RLLoopState(**saved["loop"])
    log.info("resumed from %s (step %d)", path, state.global_step)
    return state


def run_train_ppo(cfg, strategy, path: str, tokenizer, config_dump: dict[str, Any]) -> dict[str, Any]:
    from repulse.infra.checkpoint import Checkpointer
    from repulse.rl.rewards import make_reward_source

    models = load_models(cfg, path, strategy)
    reward_source = make_reward_source(cfg.reward, cfg.model, strategy.device)
    prompt_ids = load_prompt_ids(cfg, tokenizer)
    settings = loop_settings(cfg, len(prompt_ids))
    total = settings.fit_steps * settings.episodes * math.ceil(len(prompt_ids) / settings.prompts_per_step)
    trainer = build_trainer(cfg, models, reward_source, tokenizer, strategy, total)
    main = models.get("base") or models.get("actor")
    negdata = NegDataRecorder(trainer, cfg.harm) if cfg.harm.save_negdata else None
    checkpointer = Checkpointer(cfg.ckpt.checkpoint_dir(), cfg.ckpt.max_ckpt_num, strategy)
    state = None
    if cfg.ckpt.load_checkpoint:
        state = resume_run(cfg, checkpointer, models, trainer, negdata, strategy)
    lg = cfg.logging
    logger = MetricLogger(
        cfg.ckpt.save_path,
        enabled=strategy.is_rank_0(),
        tensorboard_dir=lg.use_tensorboard,
        wandb=lg.use_wandb,
        wandb_project=lg.wandb_project,
        wandb_run_name=lg.wandb_run_name,
        config=config_dump,
        resume_step=state.global_step if state else None,
    )
    try:
        evaluate = make_evaluator(cfg, main, tokenizer, reward_source)

        def save(loop: RLLoopState) -> None:
            # The models also go in Hugging Face format, so a checkpoint can start a new run via --pretrain.
            checkpointer.save(
                loop.global_step,
                checkpoint_state(cfg, models, trainer, loop, negdata, strategy),
                extra=lambda tmp: save_models(cfg, models, tokenizer, strategy, str(tmp)),
            )

        state = run_rl_loop(
            negdata or trainer, prompt_ids, settings, logger, evaluate=evaluate, save=save, state=state
        )
    finally:
        logger.close()
    summary = summarize(state, trainer)
    summary.update(run_post_evaluations(cfg, main, models["initial"], tokenizer, reward_source))
    if strategy.is_rank_0():
        info = cfg.evaluation.save_info_path or cfg.ckpt.save_path
        save_models(cfg, models, tokenizer, strategy, cfg.ckpt.save_path)
        write_json_atomic(f"{info}/evaluations.json", state.evaluations)
        write_json_atomic(f"{info}/summary.json", summary)
        if negdata is not None:
            write_jsonl_atomic(f"{info}/negdata.jsonl", negdata.rows)
    return summary


class NegDataRecorder:
    """Wraps a trainer; keeps every sampled (prompt, response) whose reward is below the threshold."""

    def __init__(self, trainer, harm) -> None:
        self.trainer, self.model, self.threshold = trainer, trainer.model, harm.save_negdata_threshold
        self.rows: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str]] = set()

    def step(self, prompt_ids):
        inner = getattr(self.trainer, "trainer", self.trainer)
        original = inner.reward_source

        def recording(prompts, responses):
            rewards = original(prompts, responses)
            for p, r, value in zip(prompts, responses, rewards.tolist(), strict=True):
                if value < self.threshold and (p, r) not in self.seen:
                    self.seen.add((p, r))
                    self.rows.append({"prompt": p, "response": r, "reward": value})
            return rewards

        inner.reward_source = recording
        try:
            return self.trainer.step(prompt_ids)
        finally:
            inner.reward_source = original


def run_post_evaluations(cfg, model, reference, tokenizer, reward_source) -> dict[str, Any]:
    from repulse.trainers.rl_evals import heldout_pass, negative_data_pass

    out: dict[str, Any] = {}
    if cfg.evaluation.evaluate_heldout_sampling:
        out["heldout"] = heldout_pass(cfg, model, reference, tokenizer, reward_source)
    if cfg.evaluation.evaluate_on_neg_data:
        out["negative_data"] = negative_data_pass(cfg, model, tokenizer)
    return out
