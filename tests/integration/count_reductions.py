"""Run a training command with every DDP-wrapped model counting its gradient all-reduces:
`python -m tests.integration.count_reductions OUT repulse.cli.train_ppo FLAGS...` (under torchrun, which is why
this is a module and not a monkeypatch). At each optimizer step the model's reductions since its last step are
recorded as [bucket all-reduces, distinct buckets]; rank 0 writes the list to OUT as JSON."""

from __future__ import annotations

import importlib
import json
import os
import sys

from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from repulse.distributed.torch_ddp import DDPStrategy


def main() -> int:
    out, module, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    since_step: dict[int, list[int]] = {}  # id(DDP model) -> bucket indices reduced since its last step
    steps: list[list[int]] = []
    prepare, optimizer_step = DDPStrategy.prepare, DDPStrategy.optimizer_step

    def counting_prepare(self, model):
        wrapped = prepare(self, model)
        seen = since_step.setdefault(id(wrapped), [])

        def hook(state, bucket):
            seen.append(bucket.index())
            return allreduce_hook(state, bucket)

        wrapped.register_comm_hook(None, hook)
        return wrapped

    def counting_step(self, optimizer, model, scheduler, max_norm):
        seen = since_step.get(id(model), [])
        steps.append([len(seen), len(set(seen))])
        seen.clear()
        return optimizer_step(self, optimizer, model, scheduler, max_norm)

    DDPStrategy.prepare, DDPStrategy.optimizer_step = counting_prepare, counting_step
    code = importlib.import_module(module).main(argv)
    if os.environ.get("RANK", "0") == "0":
        with open(out, "w") as f:
            json.dump(steps, f)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
