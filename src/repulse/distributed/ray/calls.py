"""Waiting for workers: every wait has a timeout, and a worker's failure stops the run with one line."""

from __future__ import annotations

from typing import Any

from repulse.config.fields import ConfigError
from repulse.infra.errors import UserError


class WorkerError(UserError):
    """A worker died, failed or did not answer in time: the run stops (the message names the worker)."""


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def wait(refs: Any, what: str, timeout: float) -> Any:
    """ray.get(refs) within `timeout` seconds. A user error raised in a worker is raised again as it was (one line);
    a dead worker, a timeout or a crash becomes a WorkerError naming `what`."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

    try:
        return ray.get(refs, timeout=timeout)
    except GetTimeoutError:
        raise WorkerError(f"{what}: no answer within {timeout:g} s (--ray_timeout); the run stops") from None
    except RayActorError as err:
        raise WorkerError(f"{what}: the worker died ({first_line(err)}); the run stops") from None
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, UserError | ConfigError):
            raise cause from None
        raise WorkerError(f"{what} failed in its worker: {first_line(cause or err)}") from err
    except RayError as err:  # the node ran out of memory, an object was lost, ...
        head = str(err).strip().splitlines()
        raise WorkerError(f"{what}: {head[0] if head else type(err).__name__}; the run stops") from None
