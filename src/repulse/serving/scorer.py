"""Turn texts into rewards with a loaded reward model: tokenize and truncate as train_rm does, pad, score.

Plain torch + transformers (no web code), so the batcher's worker thread and the tests call it directly.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from repulse.config.common import ModelArgs
from repulse.config.reward import RewardArgs
from repulse.config.serve import ServeArgs
from repulse.data.tokenize import encode_for_reward
from repulse.infra.errors import UserError
from repulse.models.load import config_positions
from repulse.models.reward import hf_model, sequence_rewards

log = logging.getLogger("repulse")


def effective_max_len(requested: int, positions: int | None) -> int:
    """--max_len, capped at the model's positions (a longer input would index past its position embeddings)."""
    if positions is not None and requested > positions:
        log.info(
            "--max_len %d is more than the model's %d positions: texts are truncated to %d",
            *(requested, positions, positions),
        )
        return positions
    return requested


def normalization_stats(config, force: bool) -> tuple[float, float] | None:
    """(mean, std) to apply, or None. The config decides unless `force` (--normalize_reward) demands stats."""
    if not force and not getattr(config, "normalize_reward", False):
        return None
    mean, std = getattr(config, "mean", None), getattr(config, "std", None)
    if mean is None or std is None:
        why = "--normalize_reward" if force else "the config sets normalize_reward"
        raise UserError(
            f"{why} but the reward model config holds no 'mean'/'std' "
            "(train it with `repulse train_rm --normalize_reward`, or drop the flag)"
        )
    return float(mean), float(std)


@dataclass
class ModelCallStats:
    calls: int = 0
    texts: int = 0
    largest: int = 0


class RewardScorer:
    """One reward per text. Not thread-safe by design: the batcher calls it from its single worker thread."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        value_head_prefix: str = "score",
        max_len: int = 2048,
        batch_size: int = 16,
        force_normalize: bool = False,
        name: str = "reward-model",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        config = hf_model(model).config
        self.value_head_prefix, self.batch_size = value_head_prefix, batch_size
        self.max_len = effective_max_len(max_len, config_positions(config))
        self.stats = normalization_stats(config, force_normalize)
        self.name = name
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.calls = ModelCallStats()
        self._lock = threading.Lock()  # guards against a second caller, which would double the memory peak

    def score_texts(self, texts: list[str]) -> list[float]:
        """Rewards of `texts` (already prompt + response), in order; model calls of at most batch_size texts."""
        seqs = encode_for_reward(self.tokenizer, texts, self.max_len)
        rewards: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            rewards.extend(self.score_ids(seqs[start : start + self.batch_size]))
        return rewards

    def score_ids(self, seqs: list[list[int]]) -> list[float]:
        """One model call on token id lists (right-padded, reward read at each row's last real token)."""
        if not seqs:
            return []
        # Padded as Python lists, then one tensor each: per-row tensors (data.collate.pad_sequences) cost a copy
        # per text, which shows at serving rates.
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [self.pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with self._lock, torch.inference_mode():
            rewards = sequence_rewards(self.model, ids, mask, self.value_head_prefix, normalize=False)
            self.calls.calls += 1
            self.calls.texts += len(seqs)
            self.calls.largest = max(self.calls.largest, len(seqs))
        if self.stats is not None:
            mean, std = self.stats
            rewards = (rewards - mean) / std
        return rewards.float().cpu().tolist()


def pick_device(name: str) -> torch.device:
    """--device: 'auto' is the GPU when there is one; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU")
    return torch.device(name)


def load_scorer(model_args: ModelArgs, reward: RewardArgs, max_len: int, cfg: ServeArgs) -> RewardScorer:
    """Load --reward_pretrain (default: the embedded tiny RM) and its tokenizer onto --device."""
    from repulse.models.load import load_tokenizer, resolve_model_path
    from repulse.models.reward import load_reward_model

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # process-wide: also the batcher's worker thread
    path = resolve_model_path(reward.reward_pretrain, default="tiny_rm", what="reward model")
    tokenizer = load_tokenizer(path)
    model = load_reward_model(path, model_args, value_head_prefix=reward.value_head_prefix)
    device = pick_device(cfg.device)
    if not model_args.load_in_4bit:  # bitsandbytes places 4-bit weights itself
        model.to(device)
    scorer = RewardScorer(
        model,
        tokenizer,
        value_head_prefix=reward.value_head_prefix,
        max_len=max_len,
        batch_size=cfg.batch_size,
        force_normalize=reward.normalize_reward,
        name=reward.reward_pretrain or "embedded tiny_rm",
    )
    norm = "off" if scorer.stats is None else f"mean {scorer.stats[0]:.4g} std {scorer.stats[1]:.4g}"
    log.info("reward model %s on %s; normalization %s", path, scorer.device, norm)
    return scorer
