"""Size limits that keep the code readable in one sitting (DESIGN.md §7). The allowlist stays empty."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "repulse"
# CLIs may run to 180 lines: formatted honestly (no `# fmt: skip`), a command's flag groups, config mapping and
# summary printing need that much; anything longer belongs below the CLI layer.
MAX_MODULE, MAX_CLI, MAX_FUNCTION = 400, 180, 60
ALLOWLIST: dict[str, str] = {}  # "path or path::function" -> reason


def python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


@pytest.mark.parametrize("path", python_files(), ids=rel)
def test_module_size(path: Path) -> None:
    limit = MAX_CLI if path.parent.name == "cli" else MAX_MODULE
    lines = len(path.read_text().splitlines())
    assert lines <= limit or rel(path) in ALLOWLIST, f"{rel(path)} has {lines} lines (limit {limit})"


@pytest.mark.parametrize("path", python_files(), ids=rel)
def test_function_size(path: Path) -> None:
    tree = ast.parse(path.read_text())
    too_long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION
        and f"{rel(path)}::{node.name}" not in ALLOWLIST
    ]
    assert not too_long, f"{rel(path)}: functions over {MAX_FUNCTION} lines: {too_long}"


def test_allowlist_is_empty() -> None:
    assert ALLOWLIST == {}, "every exception needs a reason, and the goal is none"


def test_no_args_namespace_below_cli() -> None:
    offenders = [
        rel(p)
        for p in python_files()
        if p.parent.name != "cli" and "argparse.Namespace" in p.read_text() and p.parent.name != "config"
    ]
    assert not offenders, f"an argparse namespace below the CLI layer: {offenders}"


# A parameter with one of these names carries a group of flags (or all of them): it must say which.
CONFIG_NAMES = ("cfg", "args", "conf", "opts", "hparams")
CONFIG_SUFFIXES = ("_cfg", "_args")


def untyped_config_parameters(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:  # not *args: positional arguments, not flags
            if arg.arg in CONFIG_NAMES or arg.arg.endswith(CONFIG_SUFFIXES):
                annotation = ast.unparse(arg.annotation) if arg.annotation is not None else None
                if annotation in (None, "Any", "typing.Any", "object"):
                    found.append(f"{node.name}({arg.arg}: {annotation})")
    return found


@pytest.mark.parametrize("path", [p for p in python_files() if p.parent.name != "cli"], ids=rel)
def test_no_untyped_config_below_cli(path: Path) -> None:
    """No `cfg` bag below the CLI layer: a function takes a typed config or the flag groups it reads."""
    offenders = untyped_config_parameters(ast.parse(path.read_text()))
    assert not offenders, f"{rel(path)}: untyped config parameters {offenders}"


def test_the_untyped_config_check_has_power() -> None:
    code = "def f(cfg, x): ...\ndef g(data_args: Any): ...\ndef h(cfg: RLConfig, args: DataArgs): ..."
    assert untyped_config_parameters(ast.parse(code)) == ["f(cfg: None)", "g(data_args: Any)"]
