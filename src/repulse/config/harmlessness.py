"""Flags of RePULSe harmlessness training and of the evaluation passes of train_ppo (METHODS §2, §6)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

HARMLESSNESS_LOSSES = ("reinforce", "neg_training", "neg_reinforce")


@dataclass
class HarmlessnessArgs:
    do_harmlessness_training: bool = arg(False, "Train p_theta with RL + RePULSe negative training, q as proposal.")
    harmlessness_training_loss_type: str = arg("neg_training", f"p_theta loss: one of {HARMLESSNESS_LOSSES}.")
    alpha: float = arg(0.0, "Weight of the negative-training term (effective alpha/N per prompt, as the paper).")
    use_base_as_proposal: bool = arg(False, "Baseline: no q; p_theta's own samples reweighted by e^{beta r}.")
    uniform_reweight: bool = arg(False, "Skip sigma-reweighting: uniform weights 1/N within each prompt group.")
    separate_reweighting_beta: float | None = arg(None, "beta' used in the p-update weights instead of beta.")
    sampling_target_updated_base: bool = arg(False, "Update p_theta first, then q (q's target uses the new p).")
    neg_baseline_type: str | None = arg(None, "neg_reinforce: baseline of the proposal term (expectation, ...).")
    neg_hardcoded_baseline: float = arg(0.0, "neg_reinforce: value for --neg_baseline_type hardcoded.")
    anneal_target_dist_beta: bool = arg(False, "Anneal beta geometrically from --start_target_dist_beta.")
    start_target_dist_beta: float | None = arg(None, "Starting beta of the annealing (same sign as the final).")
    start_alpha: float | None = arg(None, "Anneal alpha geometrically from this value to --alpha.")
    harmlessness_training_num_episodes: int = arg(1, "Passes over the prompts in harmlessness mode.")
    harmlessness_training_episodes_per_loop: int = arg(1, "Inner repetitions of each pass (fork compatibility).")
    save_negdata: bool = arg(False, "Save every sampled text with reward below --save_negdata_threshold.")
    save_negdata_threshold: float = arg(-5.0, "Reward threshold for --save_negdata.")
    save_steps_harmless: int = arg(-1, "Save p_theta every N steps (-1: at the end only).")

    def __post_init__(self) -> None:
        require(
            self.harmlessness_training_loss_type in HARMLESSNESS_LOSSES,
            f"--harmlessness_training_loss_type must be one of {HARMLESSNESS_LOSSES}",
        )
        require(self.harmlessness_training_num_episodes >= 1, "--harmlessness_training_num_episodes must be >= 1")
        if self.anneal_target_dist_beta:
            require(
                self.start_target_dist_beta is not None, "--anneal_target_dist_beta needs --start_target_dist_beta"
            )


@dataclass
class EvalArgs:
    analytic_bad_word_calc: bool = arg(
        False,
        "Exact P(bad) of the trained model by enumeration, before and after "
        "every fit step (needs a small --generate_max_len).",
    )
    bad_words_file: str | None = arg(
        None, "Bad words (one per line) for the exact evaluation. Default: embedded list."
    )
    analytic_by_threshold: bool = arg(
        False, "Exact evaluation: bad = reward below --threshold (enumerates all continuations with the reward model)."
    )
    evaluate_heldout_sampling: bool = arg(False, "After training: sample held-out prompts, reward statistics.")
    sampling_iters: int = arg(1, "Passes over the held-out prompts.")
    heldout_prompt_data: str | None = arg(None, "Held-out prompts. Default: the embedded held-out prompts.")
    heldout_input_key: str | None = arg(None, "JSON key of the held-out prompts (default: --input_key).")
    heldout_prompt_split: str = arg("train", "Split of the held-out prompts.")
    evaluate_on_neg_data: bool = arg(False, "After training: log-likelihood of known bad outputs.")
    only_evaluate_on_neg_data: bool = arg(False, "Load --pretrain, evaluate on --neg_data_load_path, exit.")
    neg_data_load_path: str | None = arg(None, "Negative data: JSONL {prompt, response}. Default: embedded.")
    no_test_info: bool = arg(True, "Accepted for command compatibility; inert (as in the reference code).")
    test_info_every: int = arg(1, "Accepted for command compatibility; inert (as in the reference code).")
    n_seeds_f_q: int = arg(1, "Accepted for command compatibility; inert (as in the reference code).")
    save_info_path: str | None = arg(None, "Folder for evaluation files (default: --save_path).")

    def __post_init__(self) -> None:
        require(self.sampling_iters >= 1, "--sampling_iters must be >= 1")
