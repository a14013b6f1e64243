"""The typed configuration of one train_ppo run: its flag groups, and what the run derives from them."""

from __future__ import annotations

from typing import NamedTuple

from repulse.config.common import CheckpointArgs, LoggingArgs, LoraArgs, ModelArgs, PPOOptimArgs, StrategyArgs
from repulse.config.evaluation import EvalArgs
from repulse.config.harmlessness import HarmlessnessArgs
from repulse.config.ppo import PPOArgs, ProposalArgs
from repulse.config.reward import RewardArgs
from repulse.config.rollout import RolloutArgs
from repulse.config.validate import separate_proposal
from repulse.generation.generate import SamplingParams
from repulse.models.proposal import is_modulation
from repulse.rl.experience import RewardShaping
from repulse.rl.potentials import Potential


class RLConfig(NamedTuple):
    model: ModelArgs
    lora: LoraArgs
    optim: PPOOptimArgs
    strategy: StrategyArgs
    ckpt: CheckpointArgs
    logging: LoggingArgs
    rollout: RolloutArgs
    reward: RewardArgs
    ppo: PPOArgs
    proposal: ProposalArgs
    harm: HarmlessnessArgs
    evaluation: EvalArgs

    @property
    def mode(self) -> str:
        """'harmlessness' (--do_harmlessness_training), 'twist' (a twist --actor_loss_type), or 'ppo' (PPO and
        REINFORCE)."""
        if self.harm.do_harmlessness_training:
            return "harmlessness"
        return "twist" if self.proposal.is_twist_loss else "ppo"

    @property
    def separate_proposal(self) -> bool:
        """Harmlessness training with a learned proposal q that draws its own samples (RePULSe)."""
        return self.mode == "harmlessness" and separate_proposal(self.harm)

    @property
    def modulated(self) -> bool:
        return is_modulation(self.proposal.parameterization)

    @property
    def episodes(self) -> int:
        """Passes over the prompts per fit step."""
        h = self.harm
        if self.mode == "harmlessness":
            return h.harmlessness_training_num_episodes * h.harmlessness_training_episodes_per_loop
        return self.rollout.num_episodes

    @property
    def save_steps(self) -> int:
        return self.harm.save_steps_harmless if self.mode == "harmlessness" else self.ckpt.save_steps

    @property
    def sampling(self) -> SamplingParams:
        r = self.rollout
        return SamplingParams(
            max_new_tokens=r.generate_max_len, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k
        )

    @property
    def potential(self) -> Potential:
        return Potential(self.reward.rm_type, self.reward.threshold, self.reward.reward_cap)

    @property
    def shaping(self) -> RewardShaping:
        """p's own samples' reward: the transform's alpha defaults to --alpha, its beta to --target_dist_beta."""
        r, beta = self.reward, self.proposal.target_dist_beta
        return RewardShaping(
            transform=r.reward_transform,
            alpha=r.rew_trans_alpha if r.rew_trans_alpha is not None else self.harm.alpha,
            beta=r.rew_trans_beta if r.rew_trans_beta is not None else (beta if beta is not None else 1.0),
            threshold=r.threshold,
            reward_cap=r.reward_cap,
        )
