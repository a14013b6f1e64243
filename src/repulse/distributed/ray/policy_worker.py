"""The policy worker of train_ppo_ray: train_ppo's recipe (trainers/rl/build.py) built around stand-ins for the
reference, reward and critic workers, its trainer's phases run on the controller's call, and the run's
checkpoints, evaluations and final models, written as train_ppo writes them.

It holds the actor, or in harmlessness mode p_theta *and* the proposal q: q's loss reads the live p_theta on every
micro-batch, which would otherwise be a call per micro-batch. Its sampling is train_ppo's sampler, so with the
same seed it draws the same tokens; with --vllm_num_engines it draws from vLLM engines it starts (rollouts.py),
synced after every update of the model they serve.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from repulse.distributed.ray.remote import RemoteCritic, RemoteReference, RemoteReward
from repulse.distributed.ray.rollouts import EngineSpec
from repulse.distributed.ray.workers import RoleWorker
from repulse.trainers.rl.config import RLConfig

log = logging.getLogger("repulse")


class PolicyWorker(RoleWorker):
    """One rank of the policy group. Every rank gets every call (the controller takes rank 0's answer), with the
    whole batch of a step: each samples and trains on its own share (trainers/rl/loop.rank_share) as train_ppo's N
    processes do, its strategy reduces the gradients, report() averages the metrics over the ranks, and the
    evaluations, checkpoints and outputs are collective as in train_ppo (rank 0 writes). `handles`: this rank's
    reference and reward replicas and its critic rank."""

    def __init__(
        self,
        config: RLConfig,
        threads: int,
        handles: dict[str, Any],
        timeout: float,
        engines: EngineSpec | None = None,
    ) -> None:
        super().__init__(config, threads)
        self.handles, self.timeout, self.engine_spec = handles, timeout, engines
        self.rollouts = None
        self.recipe = self.checkpointer = self.experience = self.evaluate_fn = self.critic = None
        self.last_checkpoint: str | None = None
        self.updates: list = []  # this step's update metrics (each rank reports its own)

    def claim_checkpoints(self, fingerprint: dict[str, Any]) -> None:
        """Claim --ckpt_path first, as train_ppo does: a folder of another run is refused before anything loads."""
        from repulse.infra.checkpoint import Checkpointer

        ckpt = self.config.ckpt
        self.checkpointer = Checkpointer(ckpt.checkpoint_dir(), ckpt.max_ckpt_num, self.strategy, fingerprint)
        self.checkpointer.start(resume=ckpt.load_checkpoint)

    def exact_evaluator(self, recipe):
        """train_ppo's exact evaluation (on every rank, gathered where sharded). Its diagnostics enumerate p_0's
        log-prob of every continuation (KL to p_0), so with --analytic_bad_word_calc this group holds its own copy
        of p_0 (a toy-sized model: at most 2M continuations are enumerated) rather than the reference worker's."""
        from repulse.trainers.rl.models import load_reference
        from repulse.trainers.rl.run import gathered_evaluator

        if not self.config.evaluation.analytic_bad_word_calc:
            return None
        with self.strategy.model_init(trainable=False, bf16=self.config.model.bf16):
            reference = self.strategy.prepare_frozen(load_reference(self.config, self.path, self.strategy))
        local = dataclasses.replace(recipe.models, reference=reference)
        # The trainers with a proposal give sigma's beta at each step, for q's diagnostics.
        beta_at = getattr(recipe.trainer, "target_beta", None)
        return gathered_evaluator(self.config, local, self.tokenizer, self.strategy, beta_at)

    def build(self) -> dict[str, Any]:
        """The recipe; resumed from the newest checkpoint with --load_checkpoint. What the controller's loop needs."""
        from repulse.trainers.guard import Guard
        from repulse.trainers.rl.build import RemoteRoles, build_recipe
        from repulse.trainers.rl.loop import lock_step
        from repulse.trainers.rl.steps import Streams

        h = self.handles
        critic = None
        if "critic" in h:
            critic = self.critic = RemoteCritic(h["critic"], Guard(self.strategy), self.timeout)
        roles = RemoteRoles(RemoteReference(h["reference"], self.timeout), RemoteReward(h["reward"], self.timeout))
        roles.critic = critic
        self.recipe = recipe = build_recipe(self.config, self.strategy, self.path, self.tokenizer, roles)
        if critic is not None:
            critic.guard = recipe.guard  # the critic's messages name the step the loop is at
        self.config = recipe.config
        # train_ppo's loop sets the streams; here the phases run in the worker (lock-step where sharded).
        recipe.trainer.streams = Streams(self.config.optim.seed, others_running=lock_step(self.strategy))
        self.evaluate_fn = self.exact_evaluator(recipe)
        state = self.resume() if self.config.ckpt.load_checkpoint else None
        if self.engine_spec is not None:  # after a resume: the engines get the weights the run goes on from
            self.start_engines(recipe)
        return {
            "config": recipe.config,
            "prompt_ids": recipe.prompt_ids,
            "settings": recipe.settings,
            "rounds": recipe.trainer.rounds(),
            "samples_per_prompt": recipe.trainer.samples_per_prompt(),
            "evaluates": self.evaluate_fn is not None,
            "state": None if state is None else dataclasses.asdict(state),
        }

    def start_engines(self, recipe) -> None:
        """vLLM engines for the policy and for a plain-LM proposal q; the trainer draws through them."""
        from repulse.distributed.ray.rollouts import start_engines

        unwrap, models = self.strategy.unwrap, recipe.models
        roles = {"policy": unwrap(models.policy)}
        if models.proposal is not None and self.config.separate_proposal:
            if self.config.modulated:
                log.info("the proposal q = p e^m (a modulated model vLLM cannot run) samples in the policy worker")
            else:
                roles["proposal"] = unwrap(models.proposal)
        self.rollouts = start_engines(self.engine_spec, roles, self.path, self.config, self.timeout)
        recipe.trainer.sampler = self.rollouts.sampler

    # ------------------------------------------------------------------------------------------------ the phases
    def make_experience(self, prompt_ids: list[list[int]], step: int, kind: str) -> int:
        """The trainer's make_experience on this rank's share of the step's prompts (kept here for update and
        report); the samples it drew."""
        from repulse.trainers.rl.loop import rank_share

        trainer, guard = self.recipe.trainer, self.recipe.guard
        guard.step, guard.last_checkpoint = step + 1, self.last_checkpoint
        mine, trainer.streams.first_prompt = rank_share(prompt_ids, self.strategy.rank, self.strategy.world_size)
        before = trainer.samples_used
        self.experience = trainer.make_experience(mine, step, kind)
        if self.rollouts is not None:
            self.rollouts.sleep()  # while the models train (where vLLM has a sleep mode)
        return trainer.samples_used - before

    def update(self) -> None:
        """The trainer's update, then the engines synced; its metrics stay here, for this rank's report."""
        self.updates.append(self.recipe.trainer.update(self.experience))
        if self.rollouts is not None:
            self.rollouts.sync()

    def report(self) -> dict[str, float]:
        """The step's metrics over the ranks (train_ppo's reduction: means, sample counts summed), each rank's
        from its own updates."""
        from repulse.trainers.rl.loop import reduce_metrics

        updates, self.updates = self.updates, []
        return reduce_metrics(self.strategy, self.recipe.trainer.report(self.experience, updates))

    def evaluate(self, fit_step: int, step: int) -> dict[str, Any]:
        return self.evaluate_fn(fit_step, step)

    # --------------------------------------------------------------------------------------- checkpoints, outputs
    def checkpoint_state(self, loop) -> dict[str, Any]:
        from repulse.trainers.rl.run import checkpoint_state

        state = checkpoint_state(self.recipe, loop, self.strategy)
        if self.critic is not None:
            state["models"]["critic"] = self.critic.weights()
        return state

    def save_checkpoint(self, loop: dict[str, Any]) -> str:
        from repulse.trainers.checkpointing import save_run_checkpoint
        from repulse.trainers.rl.loop import RLLoopState

        state = RLLoopState(**loop)

        def collective(folder) -> None:
            self.save_models(folder)

        self.last_checkpoint = save_run_checkpoint(
            self.checkpointer, state.global_step, self.checkpoint_state(state), collective=collective
        )
        return self.last_checkpoint

    def save_models(self, folder) -> None:
        """Collective: the shards of sharded strategies and the models in Hugging Face format (train_ppo's
        save_shared), and the critic's, which its rank 0 writes."""
        from repulse.trainers.rl.run import save_shared

        save_shared(self.recipe, self.strategy, self.tokenizer, Path(folder))
        if self.critic is not None:
            self.critic.save_pretrained(f"{folder}/final_critic")

    def resume(self):
        """trainers/rl/run.resume, with the critic's weights and optimizer loaded into the critic worker."""
        from repulse.trainers.checkpointing import load_model_states, load_run_checkpoint, newest_checkpoint
        from repulse.trainers.rl.loop import RLLoopState
        from repulse.trainers.rl.run import FROZEN_IN_CHECKPOINT

        path = newest_checkpoint(self.checkpointer)
        if path is None:
            return None
        saved = load_run_checkpoint(self.checkpointer, path)
        models = {k: self.strategy.unwrap(v) for k, v in self.recipe.models.checkpointed().items()}
        weights = dict(saved["models"])
        if self.critic is not None:
            self.critic.load_weights(weights.pop("critic"))
        load_model_states(models, weights, frozen=FROZEN_IN_CHECKPOINT)
        for role, (optimizer, scheduler) in self.recipe.models.optimizers.items():
            if self.strategy.kind != "replicated":  # the shards of ZeRO / FSDP2, in the checkpoint's <role>/
                model = getattr(self.recipe.models, role)
                self.strategy.load_training_state(model, optimizer, scheduler, saved["sharded"][role], path / role)
        self.recipe.trainer.load_state_dict(saved["trainer"])
        if self.recipe.recorder is not None and saved["negdata"] is not None:
            self.recipe.recorder.load_state_dict(saved["negdata"])
        state = RLLoopState(**saved["loop"])
        self.last_checkpoint = state.last_checkpoint = str(path)
        return state

    def finish(self, loop: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        """The post-training evaluations, then train_ppo's outputs (final models, summary, evaluations, negdata)."""
        from repulse.trainers.rl.loop import RLLoopState
        from repulse.trainers.rl.run import after_training, write_outputs

        summary = summary | after_training(self.config, self.recipe.models, self.tokenizer, self.strategy)
        write_outputs(self.recipe, RLLoopState(**loop), summary, self.tokenizer, self.strategy)
        if self.critic is not None:
            self.critic.save_pretrained(f"{self.config.ckpt.save_path}/final_critic")
        self.strategy.cleanup()
        return summary
