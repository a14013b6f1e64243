"""DeepSpeed ZeRO 0-3 (with ZeRO-Offload), under the deepspeed launcher, torchrun or in one process.

The only code (with deepspeed_checkpoint.py) that imports deepspeed; the `deepspeed` extra provides it.

Gradient accumulation keeps the loop's semantics exactly: the loop divides each micro-batch loss by its
accumulation steps, the engine back-propagates it as it is (`backward(loss, scale_wrt_gas=False)`), and the loop
tells the engine which micro-batch ends the step (`set_gradient_accumulation_boundary`, as accelerate does), so
ZeRO-1 and stage 0 reduce gradients once per optimizer step and ZeRO-2/3 reduce-scatter each micro-batch into
their partitions. `engine.step()` runs only at that boundary; the learning-rate schedule is stepped here, outside
the engine, and stored in the project's checkpoint data like every other strategy's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from repulse.config.common import StrategyArgs
from repulse.distributed import deepspeed_checkpoint
from repulse.distributed.deepspeed_config import TrainLayout, eval_config, train_config
from repulse.distributed.strategy import OptimizerSpec, raise_layout_mismatch
from repulse.distributed.torch_ddp import TIMEOUT, DDPStrategy, ensure_process_env, restore_env

log = logging.getLogger("repulse")

SHARDED = {
    0: "nothing sharded (data parallel): every rank holds all weights, gradients and optimizer state",
    1: "optimizer state sharded across ranks; weights and gradients replicated",
    2: "optimizer state and gradients sharded across ranks; weights replicated",
    3: "weights, gradients and optimizer state sharded across ranks",
}


def import_deepspeed() -> Any:
    from repulse.infra.errors import require_package

    require_package("deepspeed", "deepspeed", "the DeepSpeed strategy")
    import deepspeed

    # DeepSpeed logs every engine detail at INFO on stdout; the run's own log says what matters. Its calls to
    # collectives torch has renamed warn on every call.
    deepspeed.utils.logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    return deepspeed


class DeepSpeedStrategy(DDPStrategy):
    kind = "deepspeed"

    def __init__(self, args: StrategyArgs) -> None:
        super().__init__(args.dist_backend)
        self.stage = args.stage()
        self.adam_offload = args.adam_offload
        self.backend_flag = args.dist_backend
        self.forward_collectives = self.stage == 3
        self._accumulating = False
        self._hf_config: Any = None  # keeps transformers' ZeRO-3 loading on while a model loads

    def setup_distributed(self) -> None:
        deepspeed = import_deepspeed()
        from deepspeed.accelerator import get_accelerator

        self._added_env = ensure_process_env()
        accelerator = get_accelerator()
        backend = accelerator.communication_backend_name() if self.backend_flag == "auto" else self.backend_flag
        self.local_rank = int(os.environ["LOCAL_RANK"])
        if accelerator.device_name() != "cpu":
            accelerator.set_device(self.local_rank)
            self.device = torch.device(accelerator.device_name(self.local_rank))
        else:
            self.device = torch.device("cpu")
        deepspeed.init_distributed(backend, auto_mpi_discovery=False, timeout=TIMEOUT)
        self.backend = backend
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        log.info("strategy: %s", self.describe())

    def describe(self) -> str:
        offload = ""
        if self.adam_offload:
            offload = "; Adam state and step on the CPU (ZeRO-Offload, DeepSpeedCPUAdam)"
            offload += ", parameters offloaded too" if self.stage == 3 else ""
        frozen = "sharded (ZeRO-3 inference)" if self.stage == 3 else "replicated (stage-0 inference)"
        return (
            f"DeepSpeed ZeRO-{self.stage}, rank {self.rank} of {self.world_size} on {self.device} "
            f"({getattr(self, 'backend', '?')}): {SHARDED[self.stage]}{offload}; frozen models {frozen}"
        )

    def model_init(
        self, trainable: bool = True, *, bf16: bool = False, offload: bool = False
    ) -> contextlib.AbstractContextManager:
        """Under ZeRO-3, from_pretrained must see DeepSpeed's config (transformers then builds the model inside
        deepspeed.zero.Init, each rank materialising only its shard); the config object must stay alive while
        the model loads."""
        return self._zero3_loading(trainable, bf16, offload) if self.stage == 3 else contextlib.nullcontext()

    @contextlib.contextmanager
    def _zero3_loading(self, trainable: bool, bf16: bool, offload: bool) -> Iterator[None]:
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

        if trainable:
            layout = TrainLayout(3, 1, 1, self.world_size, 0.0, bf16, self.adam_offload, pin_memory=self.pinned())
            config = train_config(layout)
        else:
            config = eval_config(3, self.world_size, offload_params=offload, bf16=bf16, pin_memory=self.pinned())
        self._hf_config = HfDeepSpeedConfig(config)
        try:
            yield
        finally:
            unset_hf_deepspeed_config()
            self._hf_config = None

    def pinned(self) -> bool:
        return self.device.type == "cuda"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError("the DeepSpeed strategy prepares models with prepare_train / prepare_frozen")

    def prepare_train(self, model: torch.nn.Module, spec: OptimizerSpec) -> tuple[torch.nn.Module, Any, Any]:
        deepspeed = import_deepspeed()
        optimizer = spec.build_optimizer(model)
        if self.adam_offload:
            optimizer = cpu_adam_like(optimizer)
        scheduler = spec.build_scheduler(optimizer) if spec.build_scheduler is not None else None
        bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
        layout = TrainLayout(
            stage=self.stage,
            micro_batch_size=spec.micro_batch_size,
            accumulation_steps=spec.accumulation_steps,
            world_size=self.world_size,
            max_norm=spec.max_norm,
            bf16=bf16,
            adam_offload=self.adam_offload,
            hidden_size=getattr(getattr(model, "config", None), "hidden_size", None),
            pin_memory=self.pinned(),
            engine_clips=self.stage > 0 or bf16,
        )
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=train_config(layout)
        )
        engine.checkpoint_engine = deepspeed_checkpoint.safe_checkpoint_engine()
        engine.repulse_engine_clips = layout.engine_clips
        return engine, ds_optimizer, scheduler

    def prepare_frozen(self, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
        """DeepSpeed's inference config: ZeRO-3 shards (on the CPU with `offload`) when training uses ZeRO-3;
        otherwise a replicated stage-0 engine, or the plain model kept on the CPU with `offload`."""
        if offload and self.stage != 3:
            return model.to("cpu")
        deepspeed = import_deepspeed()
        bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
        config = eval_config(self.stage, self.world_size, offload_params=offload, bf16=bf16, pin_memory=self.pinned())
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self._accumulate()

    @contextlib.contextmanager
    def _accumulate(self) -> Iterator[None]:
        # Re-entrant: an RL micro-batch holds every trained model's no_sync around the backward's own.
        previous, self._accumulating = self._accumulating, True
        try:
            yield
        finally:
            self._accumulating = previous

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        model.set_gradient_accumulation_boundary(not self._accumulating)
        model.backward(loss, scale_wrt_gas=False)  # the loop already divided by the accumulation steps

    def optimizer_step(self, optimizer: Any, model: torch.nn.Module, scheduler: Any, max_norm: float) -> float:
        norm = None
        if not model.repulse_engine_clips:  # fp32 stage 0: torch's clipping, as the other torch strategies
            params = [p for p in model.module.parameters() if p.requires_grad]
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))
        model.step()
        if norm is None:
            reported = model.get_global_grad_norm()
            norm = float(reported) if reported is not None else math.nan
        if scheduler is not None:
            scheduler.step()
        return norm

    def checkpoint_layout(self) -> dict[str, Any]:
        return {"kind": self.kind, "zero_stage": self.stage, "world_size": self.world_size}

    def check_layout(self, layout: dict[str, Any], source: str) -> None:
        if layout != self.checkpoint_layout():
            raise_layout_mismatch(layout, self.describe(), source)

    def training_state(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        from repulse.infra.checkpoint import optional_state

        return {"scheduler": optional_state(scheduler)}  # weights and optimizer: DeepSpeed's own files

    def save_shards(self, model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
        deepspeed_checkpoint.save(model, folder, self)

    def load_training_state(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, saved: dict[str, Any], folder: Path
    ) -> None:
        from repulse.infra.checkpoint import load_optional_state

        deepspeed_checkpoint.load(model, folder, self)
        load_optional_state(scheduler, saved.get("scheduler"))

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under ZeRO-3 each parameter is gathered in turn (never the whole model at once) and copied to the
        CPU on rank 0; persistent buffers are not partitioned."""
        if self.stage != 3:
            return super().full_state_dict(model)
        deepspeed = import_deepspeed()
        module = self.unwrap(model)
        out: dict[str, torch.Tensor] = {}
        for name, param in module.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                if self.is_rank_0():
                    out[name] = param.detach().cpu().clone()
        keys = set(module.state_dict().keys())
        for name, buffer in module.named_buffers():
            if name in keys and self.is_rank_0():
                out[name] = buffer.detach().cpu().clone()
        return out if self.is_rank_0() else None

    def save_pretrained(self, model: torch.nn.Module, tokenizer: Any, path: str | Path) -> Path | None:
        if self.stage != 3:
            return super().save_pretrained(model, tokenizer, path)
        from repulse.models.load import save_pretrained_atomic

        state = self.full_state_dict(model)
        out = save_pretrained_atomic(self.unwrap(model), tokenizer, path, state) if self.is_rank_0() else None
        self.barrier()
        return out

    def cleanup(self, failed: bool = False) -> None:
        """Through DeepSpeed's own tear-down, which also drops the process groups it cached (a later run in the
        same process, as in tests, would otherwise find destroyed groups)."""
        import deepspeed.comm as ds_dist

        if dist.is_initialized():
            if not failed:
                dist.barrier()
            ds_dist.destroy_process_group()
        restore_env(self._added_env)

    def full_weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        if self.stage != 3:
            return contextlib.nullcontext()
        deepspeed = import_deepspeed()
        return deepspeed.zero.GatheredParameters(list(self.unwrap(model).parameters()))


def cpu_adam_like(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """DeepSpeedCPUAdam with the parameter groups and hyper-parameters of the AdamW built for the model
    (ZeRO-Offload accepts no other optimizer). Its C++ kernel is compiled on first use (a few minutes, once)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    keep = ("params", "lr", "betas", "eps", "weight_decay")
    groups = [{k: v for k, v in g.items() if k in keep} for g in optimizer.param_groups]
    d = optimizer.defaults
    log.info("--adam_offload: DeepSpeedCPUAdam (its C++ kernel is compiled on first use, then cached)")
    return DeepSpeedCPUAdam(
        groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"], adamw_mode=True
    )
