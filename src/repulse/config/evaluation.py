"""Flags of train_ppo's evaluation passes: exact P(bad), held-out sampling, likelihood of negative data."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require


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
    no_test_info: bool = arg(
        True,
        "Sampled test info stays off, as the reference code forced it; `false` is refused: every step's metrics "
        "carry the sampled f_q and KL, and --analytic_bad_word_calc gives KL, entropy and q's fit exactly.",
    )
    test_info_every: int = arg(
        1, "Fit steps between test infos; accepted for command compatibility (test info is off)."
    )
    n_seeds_f_q: int = arg(1, "Seeds of each test info's f_q; accepted for command compatibility (test info is off).")
    save_info_path: str | None = arg(None, "Folder for evaluation files (default: --save_path).")

    def __post_init__(self) -> None:
        require(self.sampling_iters >= 1, "--sampling_iters must be >= 1")
        require(
            self.no_test_info,
            "--no_test_info false: sampled test info is not computed (nor was it in the reference code); every "
            "step's metrics carry the sampled f_q and KL, and --analytic_bad_word_calc gives KL(p_theta || p_0), "
            "the entropy and q's fit exactly",
        )
