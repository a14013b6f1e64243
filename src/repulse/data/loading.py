"""Load local JSON/JSONL/CSV/Parquet files, `datasets` folders and hub names; blend several by probability."""

from __future__ import annotations

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
        raise DataError(f"dataset {name}: cannot load ({msg})") from err


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
    return blend_datasets(
        sources, probs, columns, optional=optional, split=split, seed=seed, max_samples=data_args.max_samples
    )
