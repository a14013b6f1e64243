"""DeepSpeed configuration dicts, as pure functions (no deepspeed import), after OpenRLHF v0.6.3's
get_train_ds_config / get_eval_ds_config: the training config for the trained models, the inference config for
frozen ones (ZeRO-3 sharded when training uses ZeRO-3, else stage 0).

OpenRLHF sets bucket sizes and the persistence threshold to "auto", which DeepSpeed alone reads as its defaults
(its config models drop "auto": a 5e8-element reduce bucket, 1e5-element persistence). Here they are what the
Hugging Face integration makes of "auto" from the hidden size h: reduce bucket h^2, ZeRO-3 prefetch bucket
0.9 h^2, persistence threshold 10 h. On SmolLM2-135M (2 ranks, fp32) that keeps ZeRO-3's state at 1382 MiB per
rank against 1895 MiB with DeepSpeed's defaults (benchmarks/strategies.py, under load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

QUIET = {"steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}


@dataclass(frozen=True)
class TrainLayout:
    stage: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    max_norm: float
    bf16: bool = False
    adam_offload: bool = False
    hidden_size: int | None = None
    pin_memory: bool = False
    # DeepSpeed clips (and reports the norm) in its ZeRO and bf16 optimizers; a plain fp32 stage-0 run is
    # clipped by the strategy with torch's clip_grad_norm_, as the other torch strategies do.
    engine_clips: bool = True


def bucket_sizes(hidden_size: int | None) -> dict[str, int]:
    if not hidden_size:
        return {}
    h = int(hidden_size)
    return {
        "reduce_bucket_size": h * h,
        "stage3_prefetch_bucket_size": int(0.9 * h * h),
        "stage3_param_persistence_threshold": 10 * h,
    }


def offload(device_on: bool, pin_memory: bool) -> dict[str, Any]:
    return {"device": "cpu", "pin_memory": pin_memory} if device_on else {"device": "none"}


def train_config(layout: TrainLayout) -> dict[str, Any]:
    """The config of a trained model's engine. The batch sizes are the loop's own (global batch = micro x
    accumulation x world); the loop decides the accumulation boundary itself (set_gradient_accumulation_boundary)
    and divides the loss, so DeepSpeed's own scaling is not used."""
    zero: dict[str, Any] = {"stage": layout.stage, **bucket_sizes(layout.hidden_size)}
    if layout.adam_offload:
        zero["offload_optimizer"] = offload(True, layout.pin_memory)
        if layout.stage == 3:  # as OpenRLHF does with --adam_offload: ZeRO-3 parameters go to the CPU too
            zero["offload_param"] = offload(True, layout.pin_memory)
    return {
        **QUIET,
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.accumulation_steps,
        "train_batch_size": layout.micro_batch_size * layout.accumulation_steps * layout.world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": layout.bf16},
        "gradient_clipping": layout.max_norm if layout.engine_clips else 0.0,
        "prescale_gradients": False,
        "zero_allow_untested_optimizer": True,
    }


def eval_stage(train_stage: int) -> int:
    """A frozen model is ZeRO-3 sharded when training uses ZeRO-3 (its forward then gathers the layers), else
    replicated (stage 0), as in OpenRLHF."""
    return 3 if train_stage == 3 else 0


def eval_config(
    train_stage: int, world_size: int, *, offload_params: bool, bf16: bool, pin_memory: bool = False
) -> dict[str, Any]:
    """The inference config of a frozen model; `offload_params` keeps its ZeRO-3 shards on the CPU."""
    stage = eval_stage(train_stage)
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero["offload_param"] = offload(offload_params, pin_memory)
    return {
        **QUIET,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
    }
