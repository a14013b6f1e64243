"""FSDP2 (torch.distributed.fsdp.fully_shard) under torchrun, as torchtitan applies it: one FSDP group per decoder
layer, then the root (which takes the embeddings, final norm and output head).

Tied input/output embeddings share one Parameter, and torch >= 2.13 refuses a parameter managed by two FSDP
groups, so embeddings and head are never given groups of their own: the root holds them, tied or not.

On gloo, FSDP2 asks for ReduceOp.AVG in its reduce-scatter, and gloo has summed instead of averaging there
(pytorch#162338, a silent-correctness bug). Every FSDP module here is therefore set to reduce with SUM and
divide by the world size itself (`set_force_sum_reduction_for_comms`), whatever the torch version does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from repulse.distributed import dcp_checkpoint
from repulse.distributed.strategy import OptimizerSpec, raise_layout_mismatch
from repulse.distributed.torch_ddp import DDPStrategy

log = logging.getLogger("repulse")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class transformers lists in `_no_split_modules` (the layer
    classes accelerate's FSDP auto-wrap uses), outermost first, never one inside another."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers: list[torch.nn.Module] = []
    for module in model.modules():
        if type(module).__name__ in names and not any(is_inside(module, outer) for outer in layers):
            layers.append(module)
    return layers


def is_inside(module: torch.nn.Module, outer: torch.nn.Module) -> bool:
    return any(m is module for m in outer.modules())


def fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class FSDP2Strategy(DDPStrategy):
    kind = "fsdp2"
    forward_collectives = True

    def __init__(self, backend: str = "auto") -> None:
        super().__init__(backend)
        self.mesh: Any = None

    def setup_distributed(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.init_process_group()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        log.info("strategy: %s", self.describe())

    def describe(self) -> str:
        return (
            f"FSDP2, rank {self.rank} of {self.world_size} on {self.device} ({self.backend}): weights, gradients and "
            "optimizer state sharded across ranks (one group per decoder layer, embeddings and head in the root); "
            "frozen models sharded the same way"
        )

    def shard(self, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        model = model.to(self.device)
        bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
        kwargs: dict[str, Any] = {
            "mesh": self.mesh,
            # bf16 weights still reduce their gradients in fp32 (torchtitan's policy for the reduction)
            "mp_policy": MixedPrecisionPolicy(reduce_dtype=torch.float32 if bf16 else None),
            "offload_policy": CPUOffloadPolicy() if offload and self.device.type == "cuda" else OffloadPolicy(),
        }
        layers = decoder_layers(model)
        if not layers:
            log.warning(
                "FSDP2: %s names no decoder layers (_no_split_modules): it is sharded as one group, so a forward "
                "gathers all of its weights at once",
                type(model).__name__,
            )
        for layer in layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        if self.backend == "gloo":
            for module in fsdp_modules(model):
                module.set_force_sum_reduction_for_comms(True)
        return model

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError("the FSDP2 strategy prepares models with prepare_train / prepare_frozen")

    def prepare_train(self, model: torch.nn.Module, spec: OptimizerSpec) -> tuple[torch.nn.Module, Any, Any]:
        """Shard first, then build the optimizer over the sharded (DTensor) parameters."""
        model = self.shard(model)
        optimizer = spec.build_optimizer(model)
        scheduler = spec.build_scheduler(optimizer) if spec.build_scheduler is not None else None
        return model, optimizer, scheduler

    def prepare_frozen(self, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
        """Sharded as the trained model is; `offload` keeps the shards on the CPU (GPU runs)."""
        return self.shard(model, offload=offload)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # fully_shard changes the module's class in place: there is no wrapper

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self._accumulate(model)

    @contextlib.contextmanager
    def _accumulate(self, model: torch.nn.Module) -> Iterator[None]:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def optimizer_step(self, optimizer: Any, model: torch.nn.Module, scheduler: Any, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        return float(norm)

    def checkpoint_layout(self) -> dict[str, Any]:
        return {"kind": self.kind}  # DCP reshards on load: any number of processes may resume it

    def check_layout(self, layout: dict[str, Any], source: str) -> None:
        if layout.get("kind") != self.kind:
            raise_layout_mismatch(layout, self.describe(), source)

    def training_state(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        from repulse.infra.checkpoint import optional_state

        return {"scheduler": optional_state(scheduler)}  # weights and optimizer: the DCP files

    def save_shards(self, model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
        dcp_checkpoint.save(model, optimizer, folder)

    def load_training_state(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, saved: dict[str, Any], folder: Path
    ) -> None:
        from repulse.infra.checkpoint import load_optional_state

        dcp_checkpoint.load(model, optimizer, folder, self)
        load_optional_state(scheduler, saved.get("scheduler"))

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        # Tied weights appear under both names; like save_pretrained, keep each parameter once.
        keep = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        return {k: v for k, v in state.items() if k in keep} if self.is_rank_0() else None

    def save_pretrained(self, model: torch.nn.Module, tokenizer: Any, path: str | Path) -> Path | None:
        from repulse.models.load import save_pretrained_atomic

        state = self.full_state_dict(model)
        out = save_pretrained_atomic(model, tokenizer, path, state) if self.is_rank_0() else None
        self.barrier()
        return out

    def full_weights(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self._unsharded(model)

    @contextlib.contextmanager
    def _unsharded(self, model: torch.nn.Module) -> Iterator[None]:
        """Every FSDP group gathered and kept gathered across forwards, then resharded (a module not yet
        sharded holds its full weights already)."""
        modules = fsdp_modules(model)
        if not modules:
            yield
            return
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
        model.unshard()
        for module in modules:
            module.unshard()
        try:
            yield
        finally:
            for module in modules:
                module.reshard()
                module.set_reshard_after_forward(True, recurse=False)
