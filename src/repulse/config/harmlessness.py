"""Flags of RePULSe harmlessness training in train_ppo (docs/algorithms/harmlessness.md)."""

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
