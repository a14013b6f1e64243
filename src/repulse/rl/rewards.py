"""Reward sources for RL: a local reward model, a remote serve_rm server, or a Python function.

Every source maps (prompt texts, response texts) to one float reward per pair. The local model scores
prompt + response + EOS, its first --rm_max_len tokens: exactly as train_rm trains it (`encode_for_reward`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence

import torch

from repulse.config.common import ModelArgs
from repulse.config.reward import RewardArgs
from repulse.data.collate import pad_sequences
from repulse.data.tokenize import encode_for_reward
from repulse.infra.errors import UserError

log = logging.getLogger("repulse")

RewardSource = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


class LocalRewardModel:
    """A reward model scoring texts in batches of at least `batch_size` rows and at most TOKENS_PER_ROW x
    `batch_size` tokens: short texts (the enumerated continuations of the exact evaluation, most RL samples) go
    through in fewer, larger forwards; long ones in batches of `batch_size`, as before."""

    TOKENS_PER_ROW = 512

    def __init__(
        self,
        model,
        tokenizer,
        *,
        value_head_prefix: str = "score",
        normalize: bool = False,
        max_len: int | None = None,
        batch_size: int = 64,
    ) -> None:
        from repulse.models.reward import hf_model

        config = hf_model(model).config
        if normalize and not getattr(config, "normalize_reward", False):
            raise UserError(
                "--normalize_reward: the reward model config holds no mean/std (train it with "
                "train_rm --normalize_reward)"
            )
        self.model, self.tokenizer = model, tokenizer
        # Stored statistics are always applied (as everywhere else); the flag only insists that they exist.
        self.value_head_prefix, self.normalize = value_head_prefix, True
        self.max_len, self.batch_size = max_len, batch_size

    def pad(self, encoded: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        masks = [torch.ones(len(s), dtype=torch.long) for s in seqs]
        return pad_sequences(seqs, self.tokenizer.pad_token_id), pad_sequences(masks, 0)

    def batches(self, lengths: Sequence[int]) -> list[tuple[int, int]]:
        """Contiguous (start, end) row ranges: each grows while it has fewer than batch_size rows or its padded
        size (rows x longest) stays within the token budget."""
        budget, out, start = self.batch_size * self.TOKENS_PER_ROW, [], 0
        while start < len(lengths):
            end, longest = start, 0
            while end < len(lengths):
                longest_next = max(longest, lengths[end])
                if end - start >= self.batch_size and (end - start + 1) * longest_next > budget:
                    break
                end, longest = end + 1, longest_next
            out.append((start, end))
            start = end
        return out

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        from repulse.models.reward import sequence_rewards

        device = next(self.model.parameters()).device
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        encoded = encode_for_reward(self.tokenizer, texts, self.max_len)  # one tokenizer call for the lot
        out = []
        for start, end in self.batches([len(ids) for ids in encoded]):
            ids, mask = self.pad(encoded[start:end])
            rewards = sequence_rewards(
                self.model, ids.to(device), mask.to(device), self.value_head_prefix, normalize=self.normalize
            )
            out.append(rewards.float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


class FunctionReward:
    """`--reward_fn module:function`; the function takes (prompts, responses) and returns one float each."""

    def __init__(self, spec: str) -> None:
        module_name, _, attr = spec.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UserError(f"--reward_fn {spec}: cannot import ({err})") from err

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        values = torch.as_tensor(self.fn(list(prompts), list(responses)), dtype=torch.float32).flatten()
        if values.shape[0] != len(responses):
            raise UserError(f"--reward_fn returned {values.shape[0]} rewards for {len(responses)} responses")
        return values


def make_reward_source(reward_args: RewardArgs, model_args: ModelArgs, device: torch.device) -> RewardSource:
    """The reward source the flags name: --remote_rm_url, --reward_fn, or a local model (default embedded)."""
    if reward_args.remote_rm_url:
        from repulse.serving.client import RemoteRewardModel

        remote = RemoteRewardModel(reward_args.remote_rm_url)
        return lambda prompts, responses: remote(list(responses), list(prompts))
    if reward_args.reward_fn:
        return FunctionReward(reward_args.reward_fn)
    return load_local_reward_model(
        reward_args, model_args, device, normalize=reward_args.normalize_reward, max_len=reward_args.rm_max_len
    )


def load_local_reward_model(
    reward_args: RewardArgs, model_args: ModelArgs, device: torch.device, *, normalize: bool, max_len: int | None
) -> LocalRewardModel:
    """--reward_pretrain (default: the embedded tiny RM) on `device`. `normalize` insists on stored statistics."""
    from repulse.models.load import load_tokenizer, resolve_model_path
    from repulse.models.reward import load_reward_model

    path = resolve_model_path(reward_args.reward_pretrain, "tiny_rm", what="reward model")
    model = load_reward_model(path, ModelArgs(bf16=model_args.bf16), value_head_prefix=reward_args.value_head_prefix)
    return LocalRewardModel(
        model.to(device),
        load_tokenizer(path),
        value_head_prefix=reward_args.value_head_prefix,
        normalize=normalize,
        max_len=max_len,
    )


class NegativeDataRecorder:
    """A reward source that keeps every (prompt, response) it scores below `threshold` (--save_negdata): the
    trainers score through it, so every sample of p and of q is seen once, as it is scored.

    On N processes every rank scores its share of each buffer in lock-step (the same number of calls); `gather`
    (a list of every rank's rows, in rank order) gives each call's rows of all ranks, so every rank keeps the one
    list that one process scoring the whole buffer (its ranks' shares one after the other) would keep."""

    def __init__(
        self, source: RewardSource, threshold: float, gather: Callable[[list], list[list]] | None = None
    ) -> None:
        self.source, self.threshold, self.gather = source, threshold, gather
        self.rows: list[dict[str, str | float]] = []
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        rewards = self.source(prompts, responses)
        low = [
            (prompt, response, value)
            for prompt, response, value in zip(prompts, responses, rewards.tolist(), strict=True)
            if value < self.threshold
        ]
        if self.gather is not None:
            low = [row for rank_rows in self.gather(low) for row in rank_rows]
        for prompt, response, value in low:
            if (prompt, response) not in self.seen:
                self.seen.add((prompt, response))
                self.rows.append({"prompt": prompt, "response": response, "reward": value})
        return rewards

    def state_dict(self) -> dict[str, list]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.rows = list(state["rows"])
        self.seen = {(r["prompt"], r["response"]) for r in self.rows}
