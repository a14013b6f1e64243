"""The embedded tiny defaults: a word-level tokenizer, a tiny GPT-2 LM, a tiny reward model and tiny datasets.

The reward model stands in for a toxicity classifier: graded scores for clean text, far lower ones for the planted
bad words (docs/toy.md describes the toy and its exact properties).

Built by `python scripts/build_assets.py` (seeded, deterministic) and committed, so that every CLI runs with no
model or data given and no hub. Paths only: importing this module loads nothing heavy (no torch).

    from repulse.assets import TINY_LM_DIR, default_dataset, bad_words, load_metadata
    default_dataset("preference")   # -> ".../assets/data/preference.jsonl"
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
TINY_LM_DIR = ASSETS_DIR / "tiny_lm"
TINY_RM_DIR = ASSETS_DIR / "tiny_rm"
DATA_DIR = ASSETS_DIR / "data"
BUILD_HINT = "run `python scripts/build_assets.py` (or `make assets`) to build the embedded assets"

# Dataset kind -> file. Keys follow the OpenRLHF conventions of each format:
#   pretrain {"text"}; sft / distill {"input", "output"}; preference {"prompt", "chosen", "rejected"};
#   unpaired {"input", "output", "label"}; prm {"input" with "ки" after each step, "value": ["+" | "-", ...]};
#   prompts / heldout_prompts {"prompt"}; behaviors.csv goal,target; strings.csv target;
#   negative {"prompt", "response"}; chat {"messages": [{"role", "content"}, ...]}.
DEFAULT_DATASETS: dict[str, str] = {
    "sft": str(DATA_DIR / "sft.jsonl"),
    "pretrain": str(DATA_DIR / "corpus.jsonl"),
    "preference": str(DATA_DIR / "preference.jsonl"),
    "unpaired": str(DATA_DIR / "unpaired.jsonl"),
    "prm": str(DATA_DIR / "prm.jsonl"),
    "prompts": str(DATA_DIR / "prompts.jsonl"),
    "heldout_prompts": str(DATA_DIR / "heldout_prompts.jsonl"),
    "distill": str(DATA_DIR / "distill.jsonl"),
    "behaviors": str(DATA_DIR / "behaviors.csv"),
    "strings": str(DATA_DIR / "strings.csv"),
    "negative": str(DATA_DIR / "negative.jsonl"),
    "chat": str(DATA_DIR / "chat.jsonl"),
}


def asset_path(*parts: str) -> Path:
    """The path of an embedded asset, e.g. asset_path("data", "sft.jsonl"); a clear error if it was not built."""
    path = ASSETS_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"embedded asset {path} is missing: {BUILD_HINT}")
    return path


def load_metadata() -> dict:
    """assets.json: seed, default prompt, bad words, RM threshold and calibration, exact P(bad) of the tiny LM, the
    toy's exact properties (`toy_properties`), file sizes."""
    return json.loads(asset_path("assets.json").read_text(encoding="utf-8"))


def default_dataset(kind: str) -> str:
    """The embedded dataset file for a kind of data (a key of DEFAULT_DATASETS)."""
    if kind not in DEFAULT_DATASETS:
        raise KeyError(f"no embedded dataset of kind {kind!r}; kinds: {', '.join(DEFAULT_DATASETS)}")
    return str(asset_path("data", Path(DEFAULT_DATASETS[kind]).name))


def bad_words() -> list[str]:
    """The planted bad words of the synthetic grammar (one token each in the tiny tokenizer)."""
    text = asset_path("bad_words.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
