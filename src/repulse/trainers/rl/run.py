"""A whole train_ppo run: build the recipe, resume, run the loop with checkpoints, evaluate, write the outputs.

Outputs under --save_path: config.yaml (written by the CLI), metrics.jsonl (one row per step and per evaluation),
final/ (p_theta in harmlessness mode, else the actor; in twist learning a full-LM q), final_proposal/ (q),
final_critic/, final_ema/, summary.json, evaluations.json, and negdata.jsonl with --save_negdata.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repulse.infra.checkpoint import Checkpointer
from repulse.infra.files import write_json_atomic, write_jsonl_atomic
from repulse.infra.metrics import MetricLogger
from repulse.trainers.checkpointing import (
    load_model_states,
    load_run_checkpoint,
    model_states,
    newest_checkpoint,
    run_fingerprint,
    save_run_checkpoint,
)
from repulse.trainers.rl.build import Recipe, build_recipe
from repulse.trainers.rl.config import RLConfig
from repulse.trainers.rl.evals import exact_evaluator, post_training_evaluations
from repulse.trainers.rl.loop import RLLoopState, lock_step, run_rl_loop
from repulse.trainers.rl.models import save_models

log = logging.getLogger("repulse")
FROZEN_IN_CHECKPOINT = ("ema",)  # not trained by an optimizer, so its whole state is what changed


def run_train_ppo(
    config: RLConfig,
    strategy,
    path: str,
    tokenizer,
    config_dump: dict[str, Any],
    write_config: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The run, resumed when --load_checkpoint says so. The checkpoint folder is claimed first, so a run that
    cannot use it (another run's checkpoints) is refused before `write_config()` writes or a model loads."""
    ckpt = config.ckpt
    fingerprint = run_fingerprint("train_ppo", config_dump)
    checkpointer = Checkpointer(ckpt.checkpoint_dir(), ckpt.max_ckpt_num, strategy, fingerprint)
    checkpointer.start(resume=ckpt.load_checkpoint)
    if write_config is not None:
        write_config()
    recipe = build_recipe(config, strategy, path, tokenizer)
    config = recipe.config  # with --generate_max_len fitted to the model's positions
    state = resume(recipe, checkpointer, strategy) if ckpt.load_checkpoint else None
    lg = config.logging
    logger = MetricLogger(
        config.ckpt.save_path,
        enabled=strategy.is_rank_0(),
        tensorboard_dir=lg.use_tensorboard,
        wandb=lg.use_wandb,
        wandb_project=lg.wandb_project,
        wandb_run_name=lg.wandb_run_name,
        config=config_dump,
        resume_step=state.global_step if state else None,
    )
    models = recipe.models
    try:
        beta_at = getattr(recipe.trainer, "target_beta", None)
        evaluate = gathered_evaluator(config, models, tokenizer, strategy, beta_at)

        def save(loop: RLLoopState) -> str:
            # The models also go in Hugging Face format, so a checkpoint can start a new run via --pretrain.
            return save_run_checkpoint(
                checkpointer,
                loop.global_step,
                checkpoint_state(recipe, loop, strategy),
                collective=lambda shared: save_shared(recipe, strategy, tokenizer, shared),
            )

        state = run_rl_loop(
            recipe.trainer,
            recipe.prompt_ids,
            recipe.settings,
            logger,
            recipe.guard,
            evaluate=evaluate,
            save=save,
            state=state,
        )
    finally:
        logger.close()
    summary = summarize(state) | after_training(config, models, tokenizer, strategy)
    write_outputs(recipe, state, summary, tokenizer, strategy)
    return summary


def after_training(config: RLConfig, models, tokenizer, strategy) -> dict[str, Any]:
    """The post-training evaluations, on every rank (sampling in lock-step where a forward is a collective)."""
    evaluated, reference = strategy.unwrap(models.evaluated), strategy.unwrap(models.reference)
    return post_training_evaluations(config, evaluated, reference, tokenizer, models.reward, lock_step(strategy))


def gathered_evaluator(
    config: RLConfig, models, tokenizer, strategy, beta_at: Callable[[int], float] | None
) -> Callable[[int, int], dict] | None:
    """The exact evaluation (--analytic_bad_word_calc) on every rank (the enumeration is the same on each; rank
    0's logger records it), on the modules under the strategy's wrappers. The evaluated model's full weights are
    gathered where they are sharded (ZeRO-3, FSDP2); q and p_0, read less often, gather layer by layer in their
    own forward hooks, which is safe because every rank runs the same evaluation."""
    plain = dataclasses.replace(
        models,
        reference=strategy.unwrap(models.reference),
        policy=None if models.policy is None else strategy.unwrap(models.policy),
        proposal=None if models.proposal is None else strategy.unwrap(models.proposal),
    )
    evaluate = exact_evaluator(config, plain, tokenizer, beta_at)
    if evaluate is None:
        return None

    def run(fit_step: int, step: int) -> dict:
        with strategy.full_weights(models.evaluated):
            return evaluate(fit_step, step)

    return run


def checkpoint_state(recipe: Recipe, loop: RLLoopState, strategy) -> dict[str, Any]:
    """Everything a resumed run needs besides the RNG (the Checkpointer adds that): plain tensors and values.
    Replicated strategies: every model's trainable weights here (optimizers in the trainer's state). Sharded ones:
    each trained model's strategy.training_state here, its weights and optimizer in its shards (save_shared)."""
    models = recipe.models
    sharded = None
    if strategy.kind == "replicated":
        weights = model_states(
            {k: strategy.unwrap(v) for k, v in models.checkpointed().items()}, frozen=FROZEN_IN_CHECKPOINT
        )
    else:
        weights = model_states({"ema": models.ema}, frozen=FROZEN_IN_CHECKPOINT)
        sharded = {
            role: strategy.training_state(getattr(models, role), optimizer, scheduler)
            for role, (optimizer, scheduler) in models.optimizers.items()
        }
    return {
        "models": weights,
        "sharded": sharded,
        "trainer": recipe.trainer.state_dict(),
        "loop": dataclasses.asdict(loop),
        "negdata": recipe.recorder.state_dict() if recipe.recorder is not None else None,
    }


def save_shared(recipe: Recipe, strategy, tokenizer, folder: Path) -> None:
    """Collective, into the checkpoint: each trained model's shards (sharded strategies: folder/<role>/) and the
    models in Hugging Face format, so a checkpoint can start a new run via --pretrain."""
    models = recipe.models
    if strategy.kind != "replicated":
        for role, (optimizer, _) in models.optimizers.items():
            strategy.save_shards(getattr(models, role), optimizer, folder / role)
    save_models(models, tokenizer, strategy, str(folder), twist=recipe.config.mode == "twist")


def resume(recipe: Recipe, checkpointer: Checkpointer, strategy) -> RLLoopState | None:
    """Load the newest checkpoint into the models, the trainer and the recorder, and restore the RNG; its loop
    state, or None when there is no checkpoint yet (the run starts from scratch)."""
    path = newest_checkpoint(checkpointer)
    if path is None:
        return None
    saved = load_run_checkpoint(checkpointer, path)
    models = recipe.models
    load_model_states(
        {k: strategy.unwrap(v) for k, v in models.checkpointed().items()},
        saved["models"],
        frozen=FROZEN_IN_CHECKPOINT,
    )
    if strategy.kind != "replicated":
        for role, (optimizer, scheduler) in models.optimizers.items():
            model = getattr(models, role)
            strategy.load_training_state(model, optimizer, scheduler, saved["sharded"][role], path / role)
    recipe.trainer.load_state_dict(saved["trainer"])
    if recipe.recorder is not None and saved["negdata"] is not None:
        recipe.recorder.load_state_dict(saved["negdata"])
    state = RLLoopState(**saved["loop"])
    state.last_checkpoint = str(path)
    log.info("resumed from %s (step %d)", path, state.global_step)
    return state


def summarize(state: RLLoopState) -> dict[str, Any]:
    """The last step's reward and samples; each exact evaluation's numbers before training and at the end
    (`exact_<name>_initial`, `exact_<name>_final`)."""
    last = state.history[-1] if state.history else {}
    summary = {
        "steps": state.global_step,
        "reward_mean_final": last.get("reward_mean"),
        "samples_used": int(last["samples_used"]) if "samples_used" in last else None,
    }
    if state.evaluations:
        first, final = state.evaluations[0], state.evaluations[-1]
        for key in (k for k in final if k.startswith("exact_") or k == "target_beta"):
            if key in first:
                summary[f"{key}_initial"] = first[key]
            summary[f"{key}_final"] = final[key]
        summary["exact_log10_p_bad_final"] = final["exact_log_p_bad"] / math.log(10)
    return summary


def write_outputs(recipe: Recipe, state: RLLoopState, summary: dict[str, Any], tokenizer, strategy) -> None:
    """Collective (the models are gathered where sharded); rank 0 writes."""
    config = recipe.config
    info = config.evaluation.save_info_path or config.ckpt.save_path
    save_models(recipe.models, tokenizer, strategy, config.ckpt.save_path, twist=config.mode == "twist")
    if not strategy.is_rank_0():
        return
    write_json_atomic(f"{info}/evaluations.json", state.evaluations)
    write_json_atomic(f"{info}/summary.json", summary)
    if recipe.recorder is not None:
        write_jsonl_atomic(f"{info}/negdata.jsonl", recipe.recorder.rows)
