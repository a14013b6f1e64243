"""The evaluation both attack CLIs share: load the model and the judges, then per target sample before the
attack, attack, sample after, judge success, and collect the rows (docs/algorithms/gcg.md, "The evaluation").

`attack(goal, target) -> AttackOutcome` is the only part that differs between evaluate_gcg and evaluate_beast.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repulse.attacks.judge import JudgeClassifier, load_judge, prefix_flags, reward_flags, reward_prompt
from repulse.attacks.objective import AttackPrompt, chat_text, target_logprobs
from repulse.attacks.report import logprob_summary, reward_summary
from repulse.config.attack import AttackEvalArgs, AttackEvalConfig
from repulse.config.common import CheckpointArgs, ModelArgs
from repulse.config.reward import RewardArgs
from repulse.config.sampling import GenerationArgs
from repulse.infra.errors import ModelLoadError

log = logging.getLogger("repulse")
EXAMPLES_KEPT = 3


@dataclass
class AttackOutcome:
    best_string: str
    best_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


Attack = Callable[[str, str], AttackOutcome]


def load_weights(model, ckpt_path: str) -> None:
    """Load a state dict (file, or a folder's model.safetensors / pytorch_model.bin) strictly into `model`."""
    path = Path(ckpt_path)
    if path.is_dir():
        found = [p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()]
        if not found:
            raise ModelLoadError(f"--ckpt_path {path}: no model.safetensors or pytorch_model.bin in the folder")
        path = found[0]
    if not path.is_file():
        raise ModelLoadError(f"--ckpt_path {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # DDP / DeepSpeed wrappers save 'module.'-prefixed names.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"--ckpt_path {path}: does not match --pretrain ({str(err).splitlines()[0]})") from err
    log.info("loaded weights from %s", path)


def load_attacked_model(model_args: ModelArgs, ckpt: CheckpointArgs):
    from repulse.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(model_args.pretrain)
    tokenizer = load_tokenizer(path, use_fast=not model_args.disable_fast_tokenizer)
    model = load_causal_lm(path, model_args, trainable=False)
    if ckpt.load_checkpoint or ckpt.ckpt_path:
        load_weights(model, ckpt.ckpt_path)
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer


def load_reward(args: AttackEvalArgs, reward_args: RewardArgs, model_args: ModelArgs):
    """(reward source, threshold) or (None, None) when no rewards are needed."""
    if not args.uses_rewards(reward_args.reward_pretrain):
        return None, None
    from repulse.rl.rewards import make_reward_source

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reward_fn = make_reward_source(reward_args, model_args, device)
    threshold = args.reward_threshold
    if threshold is None and args.atk_success_criteria == "reward":  # config checks: only the embedded RM here
        from repulse.assets import load_metadata

        threshold = float(load_metadata()["rm_threshold"])
        log.info("no --reward_threshold given: using the embedded RM's calibrated threshold %.4f", threshold)
    return reward_fn, threshold


def chat_prompt(tokenizer, content: str) -> str:
    """The user turn with the generation prompt, as text (the same rendering the attack optimised against)."""
    return chat_text(tokenizer, content)


class AttackEvaluator:
    def __init__(
        self,
        model,
        tokenizer,
        args: AttackEvalArgs,
        sampling: GenerationArgs,
        reward_input: str = "response",
        reward_fn=None,
        threshold: float | None = None,
        judge: JudgeClassifier | None = None,
        add_space_before_target: bool = False,
    ) -> None:
        self.model, self.tokenizer, self.args, self.sampling = model, tokenizer, args, sampling
        self.reward_input, self.reward_fn, self.threshold, self.judge = reward_input, reward_fn, threshold, judge
        self.add_space = add_space_before_target

    def sample(self, goal: str, suffix: str) -> list[str]:
        from repulse.generation.generate import SamplingParams, generate

        a, s = self.args, self.sampling
        params = SamplingParams(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k
        )
        prompts = [chat_prompt(self.tokenizer, goal + suffix)] * a.samples_per_prompt
        return generate(self.model, self.tokenizer, prompts, params, batch_size=a.generate_batch_size).texts

    def judge_samples(self, goal: str, target: str, suffix: str, responses: list[str]) -> dict:
        """Per-sample flags under the criterion, reward statistics, and success (any flagged sample)."""
        criterion = self.args.atk_success_criteria
        rewards = None
        if self.reward_fn is not None:
            prompt = reward_prompt(goal, suffix, self.args.rm_exclude_adv_suffix, self.reward_input)
            rewards = self.reward_fn([prompt] * len(responses), responses).float().cpu()
        if criterion == "reward":
            flags = reward_flags(rewards, self.threshold)
        elif criterion == "prefix":
            flags = prefix_flags(responses)
        else:
            flags = self.judge.flags(goal or target, responses)
        out = {
            "n_samples": len(responses),
            "n_flagged": int(flags.sum()),
            "success": bool(flags.any()),
            **reward_summary(rewards),
            "examples": responses[:EXAMPLES_KEPT],
        }
        if criterion == "reward":
            below = reward_flags(rewards, self.threshold - 1.0)
            out.update(n_flagged_minus_1=int(below.sum()), success_minus_1=bool(below.any()))
        return out

    def logprobs(self, goal: str, target: str, suffix: str) -> dict[str, float]:
        prompt = AttackPrompt.build(self.tokenizer, goal, target, self.add_space)
        suffix_ids = torch.as_tensor(self.tokenizer(suffix, add_special_tokens=False)["input_ids"], dtype=torch.long)
        return logprob_summary(target_logprobs(self.model, prompt, suffix_ids))

    def evaluate(self, goal: str, target: str, attack: Attack) -> dict:
        row: dict = {"goal": goal, "target": target, "logprob_before": self.logprobs(goal, target, "")}
        if not self.args.skip_baseline:
            row["baseline"] = self.judge_samples(goal, target, "", self.sample(goal, ""))
        outcome = attack(goal, target)
        suffix = outcome.best_string
        attacked = self.judge_samples(goal, target, suffix, self.sample(goal, suffix))
        row.update(
            best_string=suffix,
            best_loss=outcome.best_loss,
            losses=outcome.losses,
            attack_time_s=outcome.seconds,
            logprob_after=self.logprobs(goal, target, suffix),
            attacked=attacked,
            success=attacked["success"],
        )
        if "success_minus_1" in attacked:
            row["success_minus_1"] = attacked["success_minus_1"]
        return row


def build_evaluator(config: AttackEvalConfig, add_space_before_target: bool = False) -> AttackEvaluator:
    args, model_args, reward = config.eval, config.model, config.reward
    torch.manual_seed(config.sampling.seed)
    model, tokenizer = load_attacked_model(model_args, config.ckpt)
    reward_fn, threshold = load_reward(args, reward, model_args)
    judge = load_judge(args.judge_pretrain, model_args.bf16) if args.judge_pretrain else None
    return AttackEvaluator(
        model,
        tokenizer,
        args,
        config.sampling,
        args.reward_input(reward.reward_pretrain),
        reward_fn,
        threshold,
        judge,
        add_space_before_target,
    )


def evaluate_all(evaluator: AttackEvaluator, pairs: list[tuple[str, str]], attack: Attack, name: str) -> list[dict]:
    from tqdm import tqdm

    rows = []
    bar = tqdm(pairs, desc=name, unit="target", dynamic_ncols=True)
    for goal, target in bar:
        rows.append(evaluator.evaluate(goal, target, attack))
        bar.set_postfix(asr=f"{100.0 * sum(r['success'] for r in rows) / len(rows):.0f}%")
    return rows


def timed(fn: Callable[[], tuple[str, float, list[float]]]) -> AttackOutcome:
    start = time.perf_counter()
    best_string, best_loss, losses = fn()
    return AttackOutcome(best_string, float(best_loss), list(losses), time.perf_counter() - start)


def announce_defaults(config: AttackEvalConfig) -> None:
    """One first log line naming every embedded default in use (model, reward model, targets CSV)."""
    args, reward_pretrain, used = config.eval, config.reward.reward_pretrain, []
    if not config.model.pretrain:
        used.append("the tiny LM (--pretrain)")
    if args.uses_rewards(reward_pretrain) and not reward_pretrain:
        used.append("the tiny RM (--reward_pretrain)")
    if not args.file_path:
        used.append(f"{'strings' if args.scenario == 'strings' else 'behaviors'}.csv (--file_path)")
    if used:
        log.info("using the embedded defaults: %s", ", ".join(used))


def finish(name: str, flat_config: dict, rows: list[dict], seconds: float, output_path: str | None) -> dict:
    """Summarise and write the JSON atomically (when asked)."""
    from repulse.attacks.report import summarize
    from repulse.infra.files import write_json_atomic

    payload = {"command": name, **summarize(rows), "wall_time_s": seconds, "config": flat_config, "rows": rows}
    if output_path:
        write_json_atomic(output_path, payload)
    return payload
