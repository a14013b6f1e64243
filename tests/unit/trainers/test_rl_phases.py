"""The RL trainers' phases (make_experience, update, report) called directly, as a controller would, on a tiny
random GPT-2: each model runs once per micro-batch and no scoring pass is repeated; sharing p_theta's pass
between q's target and the negative term changes nothing."""

from __future__ import annotations

import pytest
import torch

from repulse.cli import train_ppo
from repulse.infra.seed import set_seed
from repulse.trainers.rl import harmlessness
from repulse.trainers.rl.build import build_recipe
from repulse.trainers.rl.loop import train_step
from tests.conftest import write_jsonl

REPULSE = [
    "--do_harmlessness_training",
    "--harmlessness_training_loss_type",
    "neg_training",
    "--target_dist_beta",
    "-1",
    "--alpha",
    "0.5",
    "--actor_loss_type",
    "ctl",
    "--parameterization",
    "policy_psi_q_p_s_t",
    "--reinforce_baseline_type",
    "expectation",
    "--duplicate_rollout_batch_by",
    "4",
    "--micro_train_batch_size",
    "4",
    "--train_batch_size",
    "4",
    "--generate_max_len",
    "3",
    "--base_actor_learning_rate",
    "1e-2",
    "--actor_learning_rate",
    "1e-2",
    "--reward_fn",
    "tests.integration.toy_reward:score",
    "--init_kl_coef",
    "0",
    "--lr_scheduler",
    "constant",
    "--lr_warmup_ratio",
    "0",
    "--disable_progress_bar",
]


def recipe(tmp_path, model_dir, *flags: str):
    config = train_ppo.parse_args(["--pretrain", str(model_dir), "--save_path", str(tmp_path), *REPULSE, *flags])
    strategy, path, tokenizer = train_ppo.start(config)
    return build_recipe(config, strategy, path, tokenizer)


class ScoringPasses:
    """Counts the forward passes of each model outside generation (which runs with use_cache=True)."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        self.counts = dict.fromkeys(models, 0)
        for name, model in models.items():
            model.register_forward_hook(self.hook(name), with_kwargs=True)

    def hook(self, name):
        def count(module, args, kwargs, output):
            if not kwargs.get("use_cache"):
                self.counts[name] += 1

        return count

    def take(self) -> dict[str, int]:
        out, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return out


@pytest.mark.parametrize(
    ("flags", "per_micro_batch"),
    [
        # p_theta: its samples (gradient) and q's samples (gradient; also q's target and f_q); q: one pass.
        ([], {"policy": 2, "proposal": 1, "reference": 0}),
        # after p_theta's step q needs the new p_theta: one more pass at the step's end (here every micro-batch)
        (["--sampling_target_updated_base"], {"policy": 3, "proposal": 1, "reference": 0}),
        # no negative term: q's target is a pass of its own
        (["--alpha", "0"], {"policy": 2, "proposal": 1, "reference": 0}),
        # a KL penalty needs the reference on p_theta's samples, once, when the experience is made
        (["--init_kl_coef", "0.1"], {"policy": 2, "proposal": 1, "reference": 0}),
    ],
    ids=["repulse", "base_first", "alpha_0", "kl"],
)
def test_each_forward_once(tmp_path, tiny_model_dir, flags, per_micro_batch):
    single = ["--new_custom_single_prompt", "--custom_prompt", "this man is a", "--micro_rollout_batch_size", "1"]
    r = recipe(tmp_path, tiny_model_dir, *flags, *single, "--rollout_batch_size", "1")
    m = r.models
    passes = ScoringPasses({"policy": m.policy, "proposal": m.proposal, "reference": m.reference})
    experience = r.trainer.make_experience(r.prompt_ids, 0, "both")
    made = passes.take()
    assert made == {"policy": 0, "proposal": 0, "reference": int("--init_kl_coef" in flags)}
    assert experience.neg.behaviour_logps is experience.neg.rollout.logps  # as sampled, not rescored
    updates = r.trainer.update(experience)
    assert passes.take() == per_micro_batch  # one micro-batch (4 rows, train batch 4)
    metrics = r.trainer.report(experience, [updates])
    assert passes.take() == {"policy": 0, "proposal": 0, "reference": 0}
    assert {"f_q", "proposal_loss", "base_loss"} <= metrics.keys()
    assert ("proposal_low_reward_ess_fraction" in metrics) == ("--alpha" not in flags)  # negative term


@pytest.mark.parametrize("flags", [[], ["--sampling_target_updated_base"]], ids=["repulse", "base_first"])
def test_sharing_p_thetas_pass_changes_nothing(tmp_path, tiny_model_dir, monkeypatch, flags):
    """The same step with every target pass made separately (as for a model with dropout) trains the same."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "this man is a"}, {"prompt": "the woman is"}])
    sizes = ["--rollout_batch_size", "2", "--micro_train_batch_size", "4", "--train_batch_size", "8"]
    geometry = [*sizes, "--micro_rollout_batch_size", "2", "--prompt_data", str(prompts)]

    def one_step(shared: bool):
        monkeypatch.setattr(harmlessness, "has_dropout", lambda model: not shared)
        set_seed(3)
        r = recipe(tmp_path / str(shared), tiny_model_dir, *flags, *geometry)
        assert r.trainer.share_p_pass == shared
        metrics = train_step(r.trainer, r.prompt_ids, 0)
        return metrics, [p.detach().clone() for p in (*r.models.policy.parameters(), *r.models.proposal.parameters())]

    (shared_metrics, shared), (separate_metrics, separate) = one_step(True), one_step(False)
    for a, b in zip(shared, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert shared_metrics["f_q"] == pytest.approx(separate_metrics["f_q"], rel=1e-5)


@pytest.mark.parametrize("eval_mode", [False, True])
def test_model_eval_runs_the_update_passes_without_dropout(tmp_path, tiny_model_dir, eval_mode):
    flags = ["--new_custom_single_prompt", "--micro_rollout_batch_size", "1", "--rollout_batch_size", "1"]
    r = recipe(tmp_path, tiny_model_dir, *flags, *(["--model_eval"] if eval_mode else []))
    modes = []
    for model in (r.models.policy, r.models.proposal):
        model.register_forward_hook(lambda module, args, kwargs, out: modes.append(module.training), with_kwargs=True)
    experience = r.trainer.make_experience(r.prompt_ids, 0, "both")
    modes.clear()  # sampling runs in eval mode either way
    r.trainer.update(experience)
    assert modes and all(training == (not eval_mode) for training in modes)
    # with --model_eval p_theta's pass scores as an eval pass would, so it serves q's target even with dropout
    assert r.trainer.share_p_pass


def test_dropout_is_detected():
    from tests.conftest import make_gpt2

    model = make_gpt2(20)
    assert not harmlessness.has_dropout(model)
    model.transformer.drop.p = 0.1
    assert harmlessness.has_dropout(model)
