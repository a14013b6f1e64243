"""batch_inference's engine: split work over processes, sample N responses per prompt, score, gather in order.

Process r of W takes items r, r + W, r + 2W, ...; every process gets every result back (an all-gather of
pickled objects), so rank 0 writes one file in input order, whatever the number of processes.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from repulse.generation.generate import SamplingParams, generate
from repulse.infra.errors import UserError

if TYPE_CHECKING:
    from repulse.config.sampling import GenerationArgs

log = logging.getLogger("repulse")

Row = dict[str, Any]


def sampling_params(args: GenerationArgs, max_new_tokens: int, num_samples: int = 1) -> SamplingParams:
    """SamplingParams from the sampling flags (temperature, top_p, top_k, repetition_penalty, greedy)."""
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        greedy=args.greedy_sampling,
        num_samples=num_samples,
        repetition_penalty=args.repetition_penalty,
    )


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, n, world_size))


def gather_objects(strategy, obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process (pickled into byte tensors for all_gather)."""
    if strategy.world_size == 1:
        return [obj]
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=strategy.device)
    sizes = strategy.all_gather(size).cpu().tolist()
    # all_gather needs equal shapes: pad every payload to the longest.
    padded = torch.zeros(max(sizes), dtype=torch.uint8)
    padded[: payload.numel()] = payload
    everything = strategy.all_gather(padded.to(strategy.device)).cpu().view(strategy.world_size, -1)
    return [pickle.loads(everything[r, : sizes[r]].numpy().tobytes()) for r in range(strategy.world_size)]


def progress_bar(strategy, total: int, desc: str, unit: str, show: bool):
    """A tqdm bar on rank 0 over this process's items (the other ranks' shares are the same size, +-1)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (show and strategy.is_rank_0()), dynamic_ncols=True)


def in_chunks(items: list[Any], size: int, fn: Callable[[list[Any]], list[Any]], bar) -> list[Any]:
    """fn over consecutive chunks of `size` items, the bar advanced by each chunk's length."""
    out: list[Any] = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        out.extend(fn(chunk))
        bar.update(len(chunk))
    bar.close()
    return out


def map_sharded(strategy, items: Sequence[Any], fn: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """`fn` applied to this process's share of `items` (one result per item); all results, in item order."""
    mine = shard_indices(len(items), strategy.rank, strategy.world_size)
    results = fn([items[i] for i in mine]) if mine else []
    if len(results) != len(mine):
        raise RuntimeError(f"expected {len(mine)} results, got {len(results)}")
    merged: dict[int, Any] = {}
    for part in gather_objects(strategy, list(zip(mine, results))):
        merged.update(part)
    return [merged[i] for i in range(len(items))]


def encode_prompts_left_truncated(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each prompt, keeping the last `max_len` (the end is where the response continues)."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    truncated = sum(len(ids) > max_len for ids in encoded)
    if truncated:
        log.info("%d prompt(s) longer than --max_len %d lost tokens from the left", truncated, max_len)
    return [list(ids[-max_len:]) for ids in encoded]


def cap_new_tokens(model_config, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """--max_new_tokens, lowered so that the longest prompt plus the response fits the model's positions."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is None or not prompt_ids:
        return max_new_tokens
    room = int(limit) - max(len(p) for p in prompt_ids)
    if room < 1:
        raise UserError(f"the longest prompt fills the model's {limit} positions: lower --max_len")
    if room < max_new_tokens:
        log.info("--max_new_tokens %d capped to %d by the model's %d positions", max_new_tokens, room, limit)
    return min(room, max_new_tokens)


def sample_groups(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams, batch_size: int):
    """`params.num_samples` response texts per prompt -> one list per prompt."""
    out = generate(model, tokenizer, prompt_ids, params, batch_size=batch_size)
    n = params.num_samples
    return [out.texts[i * n : (i + 1) * n] for i in range(len(prompt_ids))]


def generate_sharded(
    strategy, model, tokenizer, prompt_ids, params: SamplingParams, batch_size: int, *, progress: bool = False
):
    """sample_groups over all processes, `batch_size` prompts per call; every process returns the groups of all
    prompts, in order. The bar counts this process's prompts."""

    def sample(mine: list) -> list:
        bar = progress_bar(strategy, len(mine), "generate", "prompt", progress)
        return in_chunks(
            mine, batch_size, lambda chunk: sample_groups(model, tokenizer, chunk, params, batch_size), bar
        )

    return map_sharded(strategy, prompt_ids, sample)


def score_sharded(
    strategy, reward_fn, prompts: Sequence[str], responses: Sequence[str], batch_size: int, *, progress: bool = False
):
    """reward_fn(prompts, responses) -> floats, in `batch_size` chunks, split over the processes."""

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        bar = progress_bar(strategy, len(pairs), "score", "text", progress)
        return in_chunks(
            pairs, batch_size, lambda chunk: reward_fn([p for p, _ in chunk], [r for _, r in chunk]).tolist(), bar
        )

    return map_sharded(strategy, list(zip(prompts, responses)), score)


def rows_from_groups(inputs: Sequence[Any], groups: Sequence[Sequence[str]], rewards: Sequence[float] | None):
    """One {input, output[, reward]} row per sample, grouped by input (rewards are flat, in the same order)."""
    rows: list[Row] = []
    flat = iter(rewards) if rewards is not None else None
    for raw, outputs in zip(inputs, groups, strict=True):
        for text in outputs:
            row: Row = {"input": raw, "output": text}
            if flat is not None:
                row["reward"] = float(next(flat))
            rows.append(row)
    return rows


def best_per_input(rows: list[Row], n: int) -> list[Row]:
    """The highest-rewarded of each consecutive group of `n` rows (ties: the first sampled)."""
    return [max(rows[i : i + n], key=lambda r: r["reward"]) for i in range(0, len(rows), n)]


def summary_line(task: str, n_inputs: int, rows: list[Row], post_processor: str | None, output_path: str) -> str:
    rewards = [r.get("reward", r.get("chosen_reward")) for r in rows if "reward" in r or "chosen_reward" in r]
    mean = f", mean reward {sum(rewards) / len(rewards):.4g}" if rewards else ""
    post = f", post-processed by {post_processor}" if post_processor else ""
    return f"batch_inference: {task} on {n_inputs} inputs -> {len(rows)} rows{mean}{post}; wrote {output_path}"
