"""The flags of the paper's README commands parse unchanged."""

from __future__ import annotations

from repulse.cli import train_ppo

TOY_REPULSE = """
--pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --rm_max_len 300 --seed 1 --zero_stage 2
--gradient_checkpointing --bf16 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --apply_chat_template
--max_samples 100000 --prompt_max_len 1024 --generate_max_len 2 --heldout_prompt_data Silent-Zebra/h
--heldout_input_key prompt --new_custom_single_prompt --micro_rollout_batch_size 1 --rollout_batch_size 1
--duplicate_rollout_batch_by 500 --n_samples_per_prompt 1 --micro_train_batch_size 500 --train_batch_size 500
--max_epochs 1 --num_episodes 5 --do_harmlessness_training --harmlessness_training_num_episodes 5 --fit_steps 50
--lr_scheduler constant --adam_betas 0.9 0.999 --actor_learning_rate 3e-4 --critic_learning_rate 0
--base_actor_learning_rate 1e-4 --rm_type rlhf --init_kl_coef 0 --target_dist_beta -10 --alpha 0.01
--harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation
--parameterization policy_psi_q_p_s_t --actor_loss_type ctl --analytic_bad_word_calc --evaluate_heldout_sampling
--sampling_iters 1 --save_negdata --save_negdata_threshold -5 --test_info_every 100 --n_seeds_f_q 4 --no_test_info
--save_path runs/a --ckpt_path runs/a/ckpt --save_info_path runs/a/info --save_steps 100 --save_steps_harmless 100
--max_ckpt_num 1 --logging_steps 1 --eval_steps -1
"""

REINFORCE_TRANSFORM = """
--pretrain distilgpt2 --do_harmlessness_training --harmlessness_training_loss_type reinforce
--reward_transform minus_alpha_exp_beta_r --rew_trans_alpha 1 --rew_trans_beta -1 --target_dist_beta -1 --alpha 1
--reinforce_baseline_type expectation --duplicate_rollout_batch_by 500 --micro_train_batch_size 500
--train_batch_size 500 --new_custom_single_prompt --generate_max_len 2
"""

BASE_AS_PROPOSAL = """
--pretrain distilgpt2 --do_harmlessness_training --harmlessness_training_loss_type neg_training
--use_base_as_proposal --target_dist_beta -10 --alpha 0.01 --duplicate_rollout_batch_by 500
--micro_train_batch_size 500 --train_batch_size 500 --new_custom_single_prompt --generate_max_len 2
"""

PPO = """
--pretrain distilgpt2 --actor_loss_type ppo --parameterization policy --actor_learning_rate 1e-4
--critic_learning_rate 3e-5 --num_episodes 10 --init_kl_coef 0 --duplicate_rollout_batch_by 500
--micro_train_batch_size 500 --train_batch_size 500 --new_custom_single_prompt --generate_max_len 2
--critic_loss_type mse --advantage_estimator gae --eps_clip 0.2 --value_clip 0.2 --gamma 1 --lambd 0.95
"""


def test_paper_commands_parse_unchanged():
    cfg = train_ppo.parse_args(TOY_REPULSE.split())
    assert cfg.harm.do_harmlessness_training and cfg.proposal.target_dist_beta == -10
    assert cfg.optim.adam_betas == [0.9, 0.999] and cfg.rollout.duplicate_rollout_batch_by == 500
    assert cfg.evaluation.save_info_path == "runs/a/info"
    assert train_ppo.parse_args(REINFORCE_TRANSFORM.split()).reward.reward_transform == "minus_alpha_exp_beta_r"
    assert train_ppo.parse_args(BASE_AS_PROPOSAL.split()).harm.use_base_as_proposal
    assert train_ppo.parse_args(PPO.split()).proposal.actor_loss_type == "ppo"


def test_asking_for_test_info_is_one_line(capsys):
    """--no_test_info false would ask for a diagnostic nothing computes: refused, not silently ignored."""
    assert train_ppo.main(["--no_test_info", "false", "--save_path", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "--no_test_info false: sampled test info is not computed" in err and "Traceback" not in err
