"""train_ppo: PPO / REINFORCE, twist (proposal) learning, and RePULSe harmlessness training.

Modes:
- PPO (`--actor_loss_type ppo`, critic + GAE + KL penalty) or REINFORCE (`--actor_loss_type reinforce`,
  `--reinforce_baseline_type expectation` = RLOO);
- twist learning (`--actor_loss_type ctl|ctl_nosecondterm|dpg|sixo|sixo_approxneg` with a policy_psi_*
  `--parameterization`): q learns sigma ∝ p_0 e^{beta r} with `--target_dist_beta`;
- harmlessness (`--do_harmlessness_training`): p_theta trained with REINFORCE (+ RLOO) and, for RePULSe
  (`--harmlessness_training_loss_type neg_training`), alpha times a negative-training term on samples from a
  learned proposal q of sigma_theta ∝ p_theta e^{beta r}; q trained with CTL/DPG alongside.
Each step samples --rollout_batch_size prompts x --duplicate_rollout_batch_by responses and trains on them for
--max_epochs: --train_batch_size sequences per optimizer step, in micro-batches of --micro_train_batch_size.
Under torchrun or the deepspeed launcher (torch DDP, DeepSpeed ZeRO 0-3 with --zero_stage, or FSDP2) each of the N
processes samples and trains on its share of both (rollout_batch_size = N x micro_rollout_batch_size, as in the
fork) and the strategy averages the gradients.
Departures from the reference code: importance weights use masked sums; scoring runs in eval mode; nothing is
scored after EOS in the exact evaluation; `--num_episodes > 1` works for every harmlessness variant.
`--save_steps N` (harmlessness: `--save_steps_harmless N`) checkpoints every N steps; `--load_checkpoint` resumes
from the newest one in --ckpt_path exactly where it stopped.

    repulse train_ppo --config configs/toy_repulse.yaml                       # embedded toy, RePULSe
    repulse train_ppo --do_harmlessness_training --harmlessness_training_loss_type reinforce \\
        --reinforce_baseline_type expectation --duplicate_rollout_batch_by 64 --generate_max_len 2 \\
        --new_custom_single_prompt --analytic_bad_word_calc --save_path runs/reinforce
"""

from __future__ import annotations

from collections.abc import Sequence

from repulse.cli.runner import run_cli, write_resolved_config
from repulse.config.common import CheckpointArgs, LoggingArgs, LoraArgs, ModelArgs, PPOOptimArgs, StrategyArgs
from repulse.config.evaluation import EvalArgs
from repulse.config.harmlessness import HarmlessnessArgs
from repulse.config.parser import parse_groups, to_flat_dict
from repulse.config.ppo import PPOArgs, ProposalArgs
from repulse.config.reward import RewardArgs
from repulse.config.rollout import RolloutArgs
from repulse.trainers.rl.config import RLConfig

# The order of RLConfig's fields.
GROUPS = (
    ModelArgs,
    LoraArgs,
    PPOOptimArgs,
    StrategyArgs,
    CheckpointArgs,
    LoggingArgs,
    RolloutArgs,
    RewardArgs,
    PPOArgs,
    ProposalArgs,
    HarmlessnessArgs,
    EvalArgs,
)
# The paper's prompt datasets (and the embedded prompts) keep the prompt under "prompt".
DEFAULTS = {"input_key": "prompt"}


def parse_args(argv: Sequence[str] | None = None) -> RLConfig:
    from repulse.config.validate import check_train_ppo

    config = RLConfig(*parse_groups(GROUPS, argv, description=__doc__, defaults=DEFAULTS))
    check_train_ppo(config.rollout, config.ppo, config.proposal, config.harm, config.evaluation, config.optim)
    return config


def start(config: RLConfig, command: str = "train_ppo"):
    """(strategy, model path, tokenizer), with the seed set; the embedded tiny LM without --pretrain."""
    from repulse.distributed.launch import make_strategy
    from repulse.infra.seed import set_seed
    from repulse.models.load import load_tokenizer, resolve_model_path

    # train_ppo trains through prepare_train on every strategy; train_ppo_ray's workers are one process each.
    strategy = make_strategy(config.strategy, sharded=command == "train_ppo", command=command)
    set_seed(config.optim.seed)
    path = resolve_model_path(config.model.pretrain, "tiny_lm")
    tokenizer = load_tokenizer(
        path,
        use_fast=not config.model.disable_fast_tokenizer,
        chat_template=config.rollout.tokenizer_chat_template,
    )
    return strategy, path, tokenizer


def only_negative_data(config: RLConfig, strategy, path: str, tokenizer) -> dict:
    from repulse.infra.files import write_json_atomic
    from repulse.models.load import load_scoring_lm
    from repulse.trainers.rl.evals import negative_data_pass

    model = load_scoring_lm(path).to(strategy.device)
    result = negative_data_pass(config.evaluation, config.rollout, model, tokenizer)
    if strategy.is_rank_0():
        write_json_atomic(f"{config.ckpt.save_path}/negative_data.json", result)
        n = result["n_sequences"]
        print(f"train_ppo: negative-data mean log-prob {result['mean_logprob']:.4f} over {n} texts")
    strategy.cleanup()
    return result


def train(config: RLConfig) -> dict:
    from repulse.trainers.rl.run import run_train_ppo

    strategy, path, tokenizer = start(config)
    if config.evaluation.only_evaluate_on_neg_data:
        return only_negative_data(config, strategy, path, tokenizer)
    flat = to_flat_dict(*config)

    def write_config() -> None:
        if strategy.is_rank_0():
            write_resolved_config(config.ckpt.save_path, flat)

    try:
        summary = run_train_ppo(config, strategy, path, tokenizer, flat, write_config)
    except BaseException:
        strategy.cleanup(failed=True)  # a refused checkpoint, an interrupt: free the process group
        raise
    shown = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    summary_line = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    if strategy.is_rank_0():
        print(f"train_ppo: {summary_line}; outputs in {config.ckpt.save_path}")
    strategy.cleanup()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: train(parse_args(a)), argv, "train_ppo")


if __name__ == "__main__":
    raise SystemExit(main())
