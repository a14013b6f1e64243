"""Errors that a user can fix: the CLI prints their one-line message and exits non-zero, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a missing file, a wrong key, an impossible flag combination). Message names the input."""


class DataError(UserError):
    """A dataset that cannot be used as given."""


class ModelLoadError(UserError):
    """A model or tokenizer that cannot be loaded as given."""


class MissingExtraError(UserError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the '{package}' package: {install_command(extra)}")


def install_command(extra: str) -> str:
    """The command that installs an extra into the running interpreter: from the source tree repulse runs from
    (a checkout), else from the package index."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]  # src/repulse/infra/errors.py -> the checkout
    target = f"-e '{root}[{extra}]'" if (root / "pyproject.toml").is_file() else f"'repulse[{extra}]'"
    return f"{sys.executable} -m pip install {target}"


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; the run stops before the optimizer step applies it."""


def require_package(module: str, extra: str, purpose: str) -> None:
    """Import check for an optional dependency, raising MissingExtraError with the install command."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, extra, purpose)
