"""Pieces of the shared evaluation: checkpoint loading, the chat prompt, the paper's flags, the summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repulse.attacks.evaluation import chat_prompt, load_weights
from repulse.attacks.report import summarize
from repulse.infra.errors import ModelLoadError


def test_load_weights_strict(tiny_lm, tmp_path: Path) -> None:
    model, _ = tiny_lm
    state = {f"module.{k}": torch.zeros_like(v) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "ckpt.pt")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        load_weights(model, str(tmp_path / "ckpt.pt"))
        assert all(float(v.abs().sum()) == 0.0 for v in model.state_dict().values())
    finally:
        model.load_state_dict(original)
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="does not match"):
        load_weights(model, str(tmp_path / "bad.pt"))
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_weights(model, str(tmp_path))


def test_chat_prompt_is_the_user_turn(tiny_lm) -> None:
    _, tok = tiny_lm
    assert chat_prompt(tok, "Hi ADV") == "<|im_start|>user\nHi ADV<|im_end|>\n<|im_start|>assistant\n"


def test_paper_gcg_flags_parse() -> None:
    from repulse.cli.evaluate_gcg import gcg_config, parse_args

    cfg = parse_args(
        [
            "--file_path",
            "x.csv",
            "--scenario",
            "behaviors",
            "--max_targets",
            "100",
            "--atk_success_criteria",
            "reward",
            "--reward_pretrain",
            "rm",
            "--reward_threshold",
            "-4.0",
            "--rm_exclude_adv_suffix",
            "--parameterization",
            "policy",
            "--max_new_tokens",
            "20",
            "--gcg_steps",
            "250",
            "--gcg_search_width",
            "512",
            "--gcg_topk",
            "256",
            "--gcg_batch_size",
            "512",
            "--gcg_n_replace",
            "1",
            "--gcg_buffer_size",
            "0",
            "--gcg_use_prefix_cache",
            "--gcg_filter_ids",
        ]
    )
    gcg = gcg_config(cfg.gcg, cfg.shared.sampling.seed)
    assert (gcg.num_steps, gcg.search_width, gcg.batch_size, gcg.use_prefix_cache) == (250, 512, 512, True)
    shared = cfg.shared
    assert shared.eval.reward_input(shared.reward.reward_pretrain) == "prompt_response"
    assert shared.eval.rm_exclude_adv_suffix


def test_summary_asr_and_reward_stats() -> None:
    def row(success: bool, mean: float, low: float) -> dict:
        stats = {"reward_mean": mean, "reward_min": low, "success": success}
        lp = {"first": -1.0, "mean": -2.0, "sum": -4.0}
        return {
            "success": success,
            "success_minus_1": False,
            "attacked": stats,
            "baseline": stats,
            "logprob_before": lp,
            "logprob_after": lp,
            "attack_time_s": 1.0,
        }

    out = summarize([row(True, 0.0, -5.0), row(False, 2.0, 1.0), row(False, 4.0, 3.0), row(True, 6.0, 0.0)])
    assert out["asr"] == 50.0 and out["asr_minus_1"] == 0.0
    assert out["reward_stats"] == pytest.approx({"mean": 3.0, "std": 5**0.5, "median": 3.0, "min": -5.0})


def test_chatml_bos_is_kept_when_encoding_does_not_add_it() -> None:
    from repulse.assets import TINY_LM_DIR
    from repulse.attacks.objective import AttackPrompt
    from repulse.models.load import load_tokenizer

    tok = load_tokenizer(str(TINY_LM_DIR))
    tok.bos_token = "<|im_start|>"  # as in SmolLM2, whose tokenizer adds no BOS (nanoGCG drops every marker)
    prompt = AttackPrompt.build(tok, "Hi", " there")
    assert tok.decode(prompt.before_ids[0]).startswith("<|im_start|>user")
    assert tok.decode(prompt.after_ids[0]) == "<|im_end|>\n<|im_start|>assistant\n"
