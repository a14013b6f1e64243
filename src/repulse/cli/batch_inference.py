"""batch_inference: generate responses for a prompt dataset, or score prompt-response pairs with a reward model.

--eval_task generate samples --best_of_n responses per prompt with the Hugging Face backend (data-parallel
under torchrun: each process takes its share, rank 0 writes the file in input order); generate_vllm (or
--vllm) does the same with vLLM; rm scores {input_key, output_key} rows. With --reward_pretrain, generate keeps
the best of N; --post_processor rs|csft|iter_dpo turns scored rows into train_sft / train_dpo data. Output:
--output_path, JSON Lines of {input, output[, reward]} (iter_dpo: {prompt, chosen, rejected, ...}).

    repulse batch_inference --output_path out.jsonl --max_new_tokens 16 --greedy_sampling   # tiny LM + prompts
    repulse batch_inference --pretrain runs/sft/final --dataset prompts.jsonl --input_key prompt \\
        --apply_chat_template --best_of_n 4 --reward_pretrain runs/rm/final --output_path best.jsonl
    repulse batch_inference --eval_task rm --dataset sft.jsonl --post_processor rs --output_path rs.jsonl
    torchrun --nproc_per_node 2 -m repulse.cli.batch_inference --greedy_sampling --output_path out.jsonl
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import DataArgs, LoggingArgs, ModelArgs, StrategyArgs
from repulse.config.inference import InferenceArgs, check_batch_inference
from repulse.config.output import OutputArgs
from repulse.config.parser import all_but, parse_groups
from repulse.config.reward import RewardArgs
from repulse.config.sampling import GenerationArgs

log = logging.getLogger("repulse")


class InferenceConfig(NamedTuple):
    model: ModelArgs
    data: DataArgs
    sampling: GenerationArgs
    reward: RewardArgs
    output: OutputArgs
    strategy: StrategyArgs
    logging: LoggingArgs
    inference: InferenceArgs


GROUPS = (ModelArgs, DataArgs, GenerationArgs, RewardArgs, OutputArgs, StrategyArgs, LoggingArgs, InferenceArgs)
ONLY = {
    # One --dataset is read as given: no eval set, no labels, nothing packed.
    DataArgs: all_but(DataArgs, "eval_dataset", "eval_split", "label_key", "packing_samples"),
    RewardArgs: ["reward_pretrain", "value_head_prefix", "normalize_reward"],
    OutputArgs: ["output_path"],
    LoggingArgs: ["disable_progress_bar"],  # nothing is logged: no metric flags
}


def parse_args(argv: Sequence[str] | None = None) -> InferenceConfig:
    cfg = InferenceConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY))
    check_batch_inference(cfg.model, cfg.sampling, cfg.reward, cfg.output, cfg.inference)
    return cfg


def load_inputs(data: DataArgs, task: str, seed: int) -> tuple[list, list | None]:
    """(prompts, responses or None). Without --dataset: the embedded prompts (generate) or SFT pairs (rm),
    read with their own keys."""
    from repulse.data.loading import load_rows

    keys = [data.input_key, data.output_key] if task == "rm" else [data.input_key]
    if not data.dataset:
        keys = ["input", "output"] if task == "rm" else ["prompt"]
        log.info("reading the embedded dataset's keys %s (--input_key/--output_key apply to --dataset)", keys)
    rows = load_rows(data, keys, "sft" if task == "rm" else "prompts", seed=seed)
    return list(rows[keys[0]]), (list(rows[keys[1]]) if task == "rm" else None)


def generate_rows(cfg: InferenceConfig, strategy, prompts: list, texts: list[str], tokenizer, path: str) -> list:
    from repulse.generation import batch
    from repulse.rl.rewards import load_local_reward_model

    inf, sampling = cfg.inference, cfg.sampling
    ids = batch.encode_prompts_left_truncated(tokenizer, texts, cfg.data.max_len)
    if inf.task() == "generate_vllm":
        from transformers import AutoConfig

        from repulse.generation.vllm_backend import generate_vllm

        new_tokens = batch.cap_new_tokens(AutoConfig.from_pretrained(path), ids, sampling.max_new_tokens)
        params = batch.sampling_params(sampling, new_tokens, inf.best_of_n)
        groups = generate_vllm(path, ids, params, tp_size=inf.tp_size, seed=sampling.seed, bf16=cfg.model.bf16)
    else:
        from repulse.models.load import load_causal_lm

        model = load_causal_lm(path, cfg.model, trainable=False).to(strategy.device)
        new_tokens = batch.cap_new_tokens(model.config, ids, sampling.max_new_tokens)
        params = batch.sampling_params(sampling, new_tokens, inf.best_of_n)
        groups = batch.generate_sharded(
            strategy,
            model,
            tokenizer,
            ids,
            params,
            inf.micro_batch_size,
            progress=not cfg.logging.disable_progress_bar,
        )
    rewards = None
    if cfg.reward.reward_pretrain:
        flat = [t for t, g in zip(texts, groups) for _ in g]
        rewards = batch.score_sharded(
            strategy,
            load_local_reward_model(cfg.reward, cfg.model, strategy.device, normalize=False, max_len=cfg.data.max_len),
            flat,
            [o for g in groups for o in g],
            inf.micro_batch_size,
            progress=not cfg.logging.disable_progress_bar,
        )
    rows = batch.rows_from_groups(prompts, groups, rewards)
    # Best-of-N keeps one row per input, unless a post-processor wants every scored sample.
    return batch.best_per_input(rows, inf.best_of_n) if rewards and not inf.post_processor else rows


def run(cfg: InferenceConfig) -> list[dict]:
    from repulse.data.postprocess import post_process
    from repulse.data.templates import format_prompt
    from repulse.distributed.launch import make_strategy, note_not_applicable
    from repulse.generation import batch
    from repulse.infra.files import write_jsonl_atomic
    from repulse.infra.seed import set_seed
    from repulse.models.load import load_tokenizer, resolve_model_path
    from repulse.rl.rewards import load_local_reward_model

    inf, d, task = cfg.inference, cfg.data, cfg.inference.task()
    if task == "generate_vllm":
        from repulse.generation.vllm_backend import import_vllm

        import_vllm()  # a missing extra is reported before anything loads
    note_not_applicable(cfg.strategy, "batch_inference", "it trains nothing: each process holds the model")
    strategy = make_strategy(StrategyArgs(dist_backend=cfg.strategy.dist_backend))
    try:
        set_seed(cfg.sampling.seed + strategy.rank)
        rm = task == "rm"
        path = resolve_model_path(
            cfg.reward.reward_pretrain if rm else cfg.model.pretrain,
            "tiny_rm" if rm else "tiny_lm",
            what="reward model" if rm else "model",
        )
        tokenizer = load_tokenizer(
            path,
            use_fast=not cfg.model.disable_fast_tokenizer,
            padding_side="left",
            chat_template=d.tokenizer_chat_template,
        )
        prompts, responses = load_inputs(d, task, cfg.sampling.seed)
        texts = [
            format_prompt(p, tokenizer, input_template=d.input_template, chat=d.apply_chat_template) for p in prompts
        ]
        if task == "rm":
            show = not cfg.logging.disable_progress_bar
            scorer = load_local_reward_model(
                cfg.reward, cfg.model, strategy.device, normalize=False, max_len=d.max_len
            )
            scores = batch.score_sharded(strategy, scorer, texts, responses, inf.micro_batch_size, progress=show)
            rows = batch.rows_from_groups(prompts, [[r] for r in responses], scores)
        else:
            rows = generate_rows(cfg, strategy, prompts, texts, tokenizer, path)
        rows = post_process(
            inf.post_processor, rows, reward_template=inf.reward_template, normalize=cfg.reward.normalize_reward
        )
        if strategy.is_rank_0():
            write_jsonl_atomic(cfg.output.output_path, rows)
            print(batch.summary_line(task, len(prompts), rows, inf.post_processor, cfg.output.output_path))
        strategy.barrier()
    finally:
        strategy.cleanup()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: run(parse_args(a)), argv, "batch_inference")


if __name__ == "__main__":
    raise SystemExit(main())
