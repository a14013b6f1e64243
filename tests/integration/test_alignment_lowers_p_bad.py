"""DPO and KTO on the embedded toy data (clean preferred over bad) lower the embedded LM's exact P(bad).

P(bad) is the exact probability, by enumeration of every 2-token continuation of "This man is a", that the
continuation contains one of the planted bad words (the same number `make demo` reports).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repulse.assets import TINY_LM_DIR, bad_words, load_metadata
from repulse.cli import train_dpo, train_kto
from repulse.estimation.exact import exact_bad_probability
from repulse.models.load import load_scoring_lm, load_tokenizer

FLAGS = [
    "--micro_train_batch_size",
    "16",
    "--train_batch_size",
    "32",
    "--max_samples",
    "256",
    "--max_epochs",
    "1",
    "--learning_rate",
    "5e-4",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--max_len",
    "32",
    "--beta",
    "0.1",
    "--seed",
    "2",
    "--disable_progress_bar",
]


def exact_log_p_bad(model_dir: Path) -> float:
    meta = load_metadata()
    tokenizer, model = load_tokenizer(str(model_dir)), load_scoring_lm(str(model_dir))
    prompt = torch.tensor(tokenizer(meta["default_prompt"])["input_ids"])
    result = exact_bad_probability(
        model,
        prompt,
        meta["response_len"],
        bad_words=bad_words(),
        tokenizer=tokenizer,
        eos_token_id=tokenizer.eos_token_id,
    )
    return result.log_p_bad


@pytest.mark.parametrize("module", [train_dpo, train_kto], ids=["dpo", "kto"])
def test_preference_training_lowers_the_exact_p_bad(tmp_path, module):
    before = exact_log_p_bad(TINY_LM_DIR)
    assert module.main(["--save_path", str(tmp_path), *FLAGS]) == 0  # embedded LM and data
    after = exact_log_p_bad(tmp_path / "final")
    # A clear drop, not noise: at least 10% lower in probability.
    assert after < before + torch.log(torch.tensor(0.9)).item(), (before, after)
