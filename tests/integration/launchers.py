"""Start a command on several gloo processes, as users do: torchrun, or the deepspeed launcher (which appends
--local_rank to the command line)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.helpers import free_port

LAUNCHERS = {
    "torchrun": lambda nproc, port: (
        ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        + ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    ),
    "deepspeed": lambda nproc, port: (
        ["-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc)] + ["--master_port", str(port)]
    ),
}


def launch(
    launcher: str, module: str, argv: list[str], nproc: int = 2, ok: bool = True, timeout: int = 480
) -> subprocess.CompletedProcess:
    """`launcher` running `python -m module argv` on `nproc` processes; asserts exit 0 when `ok`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    module_flag = ["--module", module] if launcher == "deepspeed" else ["-m", module]
    cmd = [sys.executable, *LAUNCHERS[launcher](nproc, free_port()), *module_flag, *argv, "--dist_backend", "gloo"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done
