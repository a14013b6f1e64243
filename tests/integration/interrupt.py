"""Run a training command and interrupt it (KeyboardInterrupt on every rank) once optimizer step N is done, as
a user's Ctrl-C would: `python -m tests.integration.interrupt N repulse.cli.train_sft FLAGS...` (also under
torchrun and the deepspeed launcher, which is why this is a module and not a monkeypatch)."""

from __future__ import annotations

import importlib
import sys

from repulse.trainers import loop


def main() -> int:
    stop_after, module, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    finish = loop.finish_optimizer_step

    def finish_then_stop(run, micro_metrics, bar):
        finish(run, micro_metrics, bar)
        if run.state.global_step == stop_after:
            raise KeyboardInterrupt

    loop.finish_optimizer_step = finish_then_stop
    return importlib.import_module(module).main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
