"""Run a training command and interrupt it (KeyboardInterrupt on every rank) once optimizer step N is done, as
a user's Ctrl-C would: `python -m tests.integration.interrupt N repulse.cli.train_sft FLAGS...` (also under
torchrun and the deepspeed launcher, which is why this is a module and not a monkeypatch). For train_ppo, N is
the RL step: the run stops as step N + 1 starts, after step N's checkpoint."""

from __future__ import annotations

import importlib
import sys

from repulse.trainers import loop
from repulse.trainers.rl import loop as rl_loop


def main() -> int:
    # The deepspeed launcher puts its --local_rank=N first: it goes on to the command.
    launcher = [a for a in sys.argv[1:] if a.startswith("--local_rank")]
    own = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    stop_after, module, argv = int(own[0]), own[1], [*own[2:], *launcher]
    finish = loop.finish_optimizer_step

    def finish_then_stop(run, micro_metrics, bar):
        finish(run, micro_metrics, bar)
        if run.state.global_step == stop_after:
            raise KeyboardInterrupt

    loop.finish_optimizer_step = finish_then_stop
    rl_step = rl_loop.train_step

    def rl_step_unless_stopped(trainer, prompt_ids, step):
        if step == stop_after:  # 0-based: step N + 1 is starting
            raise KeyboardInterrupt
        return rl_step(trainer, prompt_ids, step)

    rl_loop.train_step = rl_step_unless_stopped
    return importlib.import_module(module).main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
