"""Load local JSON/JSONL/CSV/Parquet files, `datasets` folders and hub names; blend several by probability."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from repulse.infra.errors import DataError

if TYPE_CHECKING:
    from repulse.config.common import DataArgs

log = logging.getLogger("repulse")

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_source(name: str, split: str = "train"):
    """One dataset as a `datasets.Dataset`. Errors name the source."""
    import datasets

    path = Path(name).expanduser()
    try:
        if path.is_file():
            fmt = FILE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(f"dataset {name}: unsupported file type {path.suffix!r} (use {sorted(FILE_FORMATS)})")
            if path.stat().st_size == 0:
                raise DataError(f"dataset {name}: empty")
            return datasets.load_dataset(fmt, data_files=str(path), split="train")
        if path.is_dir():
            return load_folder(path, split)
        if name.startswith((".", "/", "~")) or path.suffix.lower() in FILE_FORMATS:
            raise DataError(f"dataset {name}: no such file or folder")
        return datasets.load_dataset(name, split=split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the source and the first line
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "corresponds to no data" in msg or isinstance(err, IndexError | StopIteration):
            raise DataError(f"dataset {name}: empty") from err
        # datasets wraps the parser's error in "An error occurred while generating the dataset": say what and where.
        found = diagnose_text_file(path) if path.is_file() else None
        raise DataError(f"dataset {name}: cannot load ({found or msg})") from err


def diagnose_text_file(path: Path) -> str | None:
    """Why a local JSON / JSON Lines / CSV / text file does not load: the first line that is not UTF-8 or,
    for JSON Lines, not JSON. Run only after loading failed, so a good file costs nothing."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv", ".txt"):
        return None
    if suffix == ".json":
        try:
            json.loads(path.read_bytes())
            return None
        except UnicodeDecodeError:
            pass
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": JSON Lines saved as .json, checked line by line below
                return f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {number} is not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
            if suffix in (".json", ".jsonl") and line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    return f"line {number} is not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})"
    return None


def check_utf8(column, name: str, source: str) -> None:
    """Arrow's JSON reader lets invalid UTF-8 (a Latin-1 file) into string columns; it fails at the first read."""
    import pyarrow as pa

    try:
        column.validate(full=True)
    except pa.ArrowInvalid as err:
        path = Path(source).expanduser()
        found = diagnose_text_file(path) if path.is_file() else None
        raise DataError(f"dataset {source}: key {name!r}: {found or 'text that is not UTF-8'}") from err


def check_columns(dataset, columns: Sequence[str], text: Sequence[str], source: str) -> None:
    """Every row has a value in each required column, and the `text` columns hold text (or chat messages), not
    numbers: a null or a number would otherwise reach the tokenizer as "None" / "123", or a misleading error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in columns:
        column = dataset.data.column(name)
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise DataError(f"dataset {source}: row {row + 1} has no value (null) for key {name!r}")
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            check_utf8(column, name, source)
        if name in text and (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise DataError(f"dataset {source}: key {name!r} holds {kind} values, not text")


def load_folder(path: Path, split: str):
    import datasets

    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"dataset {path}: no split {split!r} (has {sorted(loaded)})")
            return loaded[split]
        return loaded
    return datasets.load_dataset(str(path), split=split)


def source_columns(data_args: DataArgs) -> list[str] | None:
    """The keys of the first --dataset source, to recognise a data format before loading; None without --dataset
    (the embedded defaults have fixed keys)."""
    if not data_args.dataset:
        return None
    return list(load_source(data_args.dataset.split(",")[0], data_args.dataset_split).column_names)


def require_columns(dataset, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"dataset {source}: missing key(s) {missing} (it has {dataset.column_names})")


def blend_datasets(
    names: Sequence[str],
    probabilities: Sequence[float],
    columns: Sequence[str],
    *,
    optional: Sequence[str] = (),
    split: str = "train",
    seed: int = 42,
    max_samples: int | None = None,
    text_columns: Sequence[str] = (),
):
    """Load each source, keep `columns` (and the `optional` ones every source has), interleave with the
    given probabilities, cap at max_samples.

    Blending samples until every source is exhausted (the smaller ones repeat), as OpenRLHF does.
    """
    import datasets

    if len(names) != len(probabilities):
        raise DataError(f"--dataset_probs has {len(probabilities)} values for {len(names)} datasets")
    loaded = []
    for name in names:
        ds = load_source(name, split)
        require_columns(ds, columns, name)
        if len(ds) == 0:
            raise DataError(f"dataset {name}: empty")
        check_columns(ds, columns, text_columns, name)
        loaded.append(ds)
    extra = [c for c in optional if c not in columns and all(c in ds.column_names for ds in loaded)]
    parts = [ds.select_columns([*columns, *extra]) for ds in loaded]
    if len(parts) == 1:
        blended = parts[0]
    else:
        blended = datasets.interleave_datasets(
            parts, probabilities=list(probabilities), seed=seed, stopping_strategy="all_exhausted"
        )
    if max_samples is not None and len(blended) > max_samples:
        blended = blended.select(range(max_samples))
    log.info("dataset %s: %d examples", ",".join(names), len(blended))
    return blended


def load_rows(
    data_args: DataArgs,
    columns: Sequence[str],
    default: str | None,
    *,
    seed: int,
    eval_split: bool = False,
    optional: Sequence[str] = (),
):
    """The blended training (or eval) rows that DataArgs describe; the embedded dataset of kind `default`
    (see repulse.assets.DEFAULT_DATASETS) when none is given.

    Returns None for an eval set that was not asked for.
    """
    names = data_args.eval_dataset if eval_split else data_args.dataset
    if not names:
        if eval_split:
            return None
        if default is None:
            raise DataError("no --dataset given and no embedded default for this command")
        from repulse.assets import default_dataset

        names = default_dataset(default)
        log.info("no --dataset given: using the embedded default %s", names)
    split = data_args.eval_split if eval_split else data_args.dataset_split
    sources = names.split(",")
    probs = data_args.probabilities() if not eval_split else [1.0 / len(sources)] * len(sources)
    text = [c for c in columns if c in (getattr(data_args, "input_key", None), getattr(data_args, "output_key", None))]
    return blend_datasets(
        *(sources, probs, columns),
        optional=optional,
        split=split,
        seed=seed,
        max_samples=data_args.max_samples,
        text_columns=text,
    )
