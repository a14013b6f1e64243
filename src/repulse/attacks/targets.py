"""Attack targets from a CSV: (goal, target) rows for `behaviors`, (\"\", target) rows for `strings`."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from repulse.infra.errors import DataError

log = logging.getLogger("repulse")


def default_targets_file(scenario: str) -> str:
    from repulse.assets import default_dataset

    path = default_dataset("strings" if scenario == "strings" else "behaviors")
    log.info("no --file_path given: using the embedded %s CSV %s", scenario, path)
    return path


def load_targets(file_path: str | None, scenario: str = "behaviors", max_targets: int | None = None):
    """[(goal, target), ...] from the CSV (first `max_targets` rows); DataError naming the file or column."""
    path = Path(file_path or default_targets_file(scenario))
    if not path.is_file():
        raise DataError(f"--file_path {path}: no such file")
    needed = ("target",) if scenario == "strings" else ("goal", "target")
    try:
        rows = read_rows(path, needed, scenario, max_targets)
    except UnicodeDecodeError as err:
        raise DataError(f"--file_path {path}: not UTF-8 text ({where_not_utf8(path)}); save the CSV as UTF-8") from err
    except csv.Error as err:
        raise DataError(f"--file_path {path}: not a readable CSV ({err})") from err
    if not rows:
        raise DataError(f"--file_path {path}: no rows")
    empty = [i for i, (_, target) in enumerate(rows) if not target.strip()]
    if empty:
        raise DataError(f"--file_path {path}: empty 'target' in data row {empty[0] + 1}")
    return rows


def where_not_utf8(path: Path) -> str:
    """'byte 0xe9 on line 3': the first byte that is not UTF-8 (the decoder's own position is per chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return f"byte 0x{data[err.start]:02x} on line {line}"
    return "undecodable bytes"


def read_rows(path: Path, needed: tuple[str, ...], scenario: str, max_targets: int | None) -> list[tuple[str, str]]:
    # utf-8-sig: a CSV saved by a spreadsheet program often starts with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(
                f"--file_path {path}: missing column {missing[0]!r} (columns: {columns}) for --scenario {scenario}"
            )
        rows = []
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            goal = "" if scenario == "strings" else (row.get("goal") or "")
            rows.append((goal, row.get("target") or ""))
            if max_targets is not None and len(rows) >= max_targets:
                break
    return rows
