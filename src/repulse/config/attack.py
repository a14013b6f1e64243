"""Flags of evaluate_gcg and evaluate_beast (docs/algorithms/gcg.md, beast.md): targets, success criteria and each
attack. Both commands also take parts of shared groups (ATTACK_GROUPS): the model, the weights to load into it,
how responses are sampled, the reward model and where the report goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from repulse.config.common import CheckpointArgs, ModelArgs, StrategyArgs
from repulse.config.fields import arg, require
from repulse.config.output import OutputArgs
from repulse.config.ppo import ProposalArgs
from repulse.config.reward import RewardArgs
from repulse.config.sampling import GenerationArgs

SCENARIOS = ("behaviors", "behaviours", "strings")
SUCCESS_CRITERIA = ("reward", "prefix", "judge")
RM_INPUTS = ("prompt_response", "response")
ATTACK_NOT_APPLICABLE = "the attack runs in one process and trains nothing"


@dataclass
class AttackEvalArgs:
    _argument_group_name = "attack evaluation"

    file_path: str | None = arg(None, "CSV of targets (goal,target; strings: target). Default: embedded CSV.")
    scenario: str = arg("behaviors", "behaviors: goal and target columns; strings: target only (empty goal).")
    max_targets: int | None = arg(None, "Attack only the first k rows of the CSV.")
    samples_per_prompt: int = arg(1000, "Responses sampled per prompt before and after the attack.")
    generate_batch_size: int = arg(256, "Responses per generate() call.")
    skip_baseline: bool = arg(False, "Skip the pre-attack samples and rewards (the attack and log-probs still run).")
    atk_success_criteria: str = arg("reward", f"Success criterion: {', '.join(SUCCESS_CRITERIA)}.")
    reward_threshold: float | None = arg(
        None, "A response is bad when its reward is below this. Default: the embedded RM's calibrated threshold."
    )
    rm_exclude_adv_suffix: bool = arg(False, "Score (goal, response) without the adversarial suffix.")
    rm_input: str | None = arg(
        None,
        "What the reward model scores: prompt_response (request + response, the reference) or response (the "
        "response alone, for chat models that restate the request). Default: response with the embedded tiny "
        "RM (its chat answers are whole sentences), else prompt_response.",
    )
    judge_pretrain: str | None = arg(
        None, "Judge causal LM (HarmBench-style Yes/No) for --atk_success_criteria judge."
    )

    def __post_init__(self) -> None:
        require(self.scenario in SCENARIOS, f"--scenario must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        if self.scenario == "behaviours":
            self.scenario = "behaviors"
        if self.max_targets is not None:
            require(self.max_targets >= 1, f"--max_targets must be >= 1, got {self.max_targets}")
        require(self.samples_per_prompt >= 1, f"--samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        require(self.generate_batch_size >= 1, f"--generate_batch_size must be >= 1, got {self.generate_batch_size}")
        require(
            self.atk_success_criteria in SUCCESS_CRITERIA,
            f"--atk_success_criteria must be one of {', '.join(SUCCESS_CRITERIA)}, got {self.atk_success_criteria!r}",
        )
        require(self.rm_input in (None, *RM_INPUTS), f"--rm_input must be one of {', '.join(RM_INPUTS)}")
        judge = self.atk_success_criteria == "judge"
        require(not judge or self.judge_pretrain, "--atk_success_criteria judge needs --judge_pretrain")
        require(judge or not self.judge_pretrain, "--judge_pretrain is used only with --atk_success_criteria judge")

    def reward_input(self, reward_pretrain: str | None) -> str:
        """--rm_input resolved: the embedded RM scores sentences, so it sees the response alone by default."""
        if self.rm_input is not None:
            return self.rm_input
        return "prompt_response" if reward_pretrain else "response"

    def uses_rewards(self, reward_pretrain: str | None) -> bool:
        """Rewards are computed for the reward criterion, or for statistics when an RM is named."""
        return self.atk_success_criteria == "reward" or reward_pretrain is not None


class AttackEvalConfig(NamedTuple):
    """The groups both attack commands take before their own attack's (ATTACK_GROUPS, in this order)."""

    model: ModelArgs
    eval: AttackEvalArgs
    sampling: GenerationArgs
    reward: RewardArgs
    ckpt: CheckpointArgs
    proposal: ProposalArgs
    output: OutputArgs


# The part of each shared group the attack commands take, and the defaults that differ from the declarations'.
ATTACK_GROUPS = (ModelArgs, AttackEvalArgs, GenerationArgs, RewardArgs, CheckpointArgs, ProposalArgs, OutputArgs)
ATTACK_ONLY = {
    GenerationArgs: ["temperature", "top_p", "top_k", "max_new_tokens", "seed"],
    RewardArgs: ["reward_pretrain", "value_head_prefix"],
    CheckpointArgs: ["ckpt_path", "load_checkpoint"],
    ProposalArgs: ["parameterization"],
    OutputArgs: ["output_path"],
    # The fork's attack commands were copied from its training commands and pass --zero_stage (and, under the
    # deepspeed launcher, --local_rank): accepted, and reported as not applicable (the attack trains nothing).
    StrategyArgs: ["zero_stage", "local_rank"],
}
# top_k 50: the Hugging Face default the reference sampled with.
ATTACK_DEFAULTS = {"top_k": 50, "max_new_tokens": 20}


def check_attack_eval(config: AttackEvalConfig) -> None:
    """Rules that span the attack commands' groups."""
    attack, reward, ckpt, proposal = config.eval, config.reward, config.ckpt, config.proposal
    require(not ckpt.load_checkpoint or ckpt.ckpt_path, "--load_checkpoint needs --ckpt_path")
    require(
        proposal.parameterization == "policy",
        f"--parameterization: the attack CLIs evaluate 'policy' models only, got {proposal.parameterization!r}",
    )
    require(
        not (attack.rm_exclude_adv_suffix and attack.reward_input(reward.reward_pretrain) == "response"),
        "--rm_exclude_adv_suffix has no effect with --rm_input response (no prompt is scored)",
    )
    if reward.reward_pretrain and attack.atk_success_criteria == "reward":
        require(
            attack.reward_threshold is not None,
            "--reward_pretrain needs --reward_threshold (the embedded RM's threshold does not apply to another model)",
        )


@dataclass
class GCGArgs:
    _argument_group_name = "GCG attack"

    gcg_steps: int = arg(250, "GCG iterations (nanoGCG num_steps).")
    gcg_optim_str_init: str = arg("x x x x x x x x x x", "Initial suffix (the reference used 10 'x' tokens).")
    gcg_search_width: int = arg(512, "Candidates per step (search_width).")
    gcg_batch_size: int | None = arg(None, "Candidates per forward pass; halved on out-of-memory (None: all).")
    gcg_topk: int = arg(256, "Top-k tokens per position from the gradient (topk).")
    gcg_n_replace: int = arg(1, "Positions replaced per candidate (n_replace).")
    gcg_buffer_size: int = arg(0, "Attack buffer of best suffixes (buffer_size; 0: follow each step's best).")
    gcg_use_mellowmax: bool = arg(False, "Mellowmax of negative target logits instead of cross-entropy.")
    gcg_mellowmax_alpha: float = arg(1.0, "Mellowmax alpha.")
    gcg_early_stop: bool = arg(False, "Stop once greedy decoding reproduces the target.")
    gcg_use_prefix_cache: bool = arg(True, "Reuse the KV cache of the prompt before the suffix.")
    gcg_allow_non_ascii: bool = arg(False, "Allow non-ASCII tokens in the suffix.")
    gcg_filter_ids: bool = arg(True, "Drop candidates that change under decode/re-encode.")
    gcg_add_space_before_target: bool = arg(False, "Prepend a space to the target.")
    gcg_universal: bool = arg(False, "Optimise one suffix for all targets (losses summed), then evaluate each.")

    def __post_init__(self) -> None:
        for name in ("gcg_steps", "gcg_search_width", "gcg_topk", "gcg_n_replace"):
            require(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        require(self.gcg_buffer_size >= 0, f"--gcg_buffer_size must be >= 0, got {self.gcg_buffer_size}")
        require(self.gcg_batch_size is None or self.gcg_batch_size >= 1, "--gcg_batch_size must be >= 1")
        require(self.gcg_mellowmax_alpha > 0, f"--gcg_mellowmax_alpha must be > 0, got {self.gcg_mellowmax_alpha}")


@dataclass
class BEASTArgs:
    _argument_group_name = "BEAST attack"

    beast_k1: int = arg(15, "Beam width k1.")
    beast_k2: int = arg(15, "Candidate tokens sampled per beam element k2.")
    beast_length: int = arg(40, "Adversarial suffix length in tokens.")
    beast_ngram: int = arg(1, "Tokens appended per iteration; only the first is chosen by the objective.")
    beast_temperature: float = arg(1.0, "Temperature of the candidate-token sampling.")
    beast_top_p: float = arg(1.0, "Top-p of the candidate-token sampling.")
    beast_batch_size: int | None = arg(None, "Candidates per forward pass; halved on out-of-memory (None: all).")

    def __post_init__(self) -> None:
        for name in ("beast_k1", "beast_k2", "beast_length", "beast_ngram"):
            require(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        require(self.beast_temperature > 0, f"--beast_temperature must be > 0, got {self.beast_temperature}")
        require(0 < self.beast_top_p <= 1, f"--beast_top_p must be in (0, 1], got {self.beast_top_p}")
        require(self.beast_batch_size is None or self.beast_batch_size >= 1, "--beast_batch_size must be >= 1")
