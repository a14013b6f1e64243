"""Turn reward-scored generations ({input, output, reward} rows) into training data, as OpenRLHF's processors do.

- rs (rejection sampling, Llama 2 §3.2.2): the best-rewarded output per input -> SFT rows {input, output, reward}.
- csft (conditional SFT, arXiv:2308.12050): every row, its input rewritten by a template holding the reward,
  e.g. "{input} <rm_score>: {reward} " -> SFT rows a model learns to condition on.
- iter_dpo (iterative DPO, RLHFlow): best vs worst output per input -> DPO rows {prompt, chosen, rejected}.

Rows are grouped by their input (the same prompt sampled N times), in order of first appearance.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from repulse.infra.errors import DataError

log = logging.getLogger("repulse")

Row = dict[str, Any]


def input_key(value: Any) -> str:
    # Inputs may be chat message lists (unhashable); their JSON text identifies them just as well.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def group_by_input(rows: list[Row]) -> list[list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if "reward" not in row:
            raise DataError("post-processing needs a 'reward' in every row")
        groups.setdefault(input_key(row["input"]), []).append(row)
    return list(groups.values())


def normalize_rewards(rows: list[Row]) -> list[Row]:
    """Rewards as z-scores over all rows (unchanged when there is one row or no spread)."""
    rewards = [float(r["reward"]) for r in rows]
    if len(rewards) < 2:
        return [dict(r) for r in rows]
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1))
    scale = std if std > 0 else 1.0
    return [{**r, "reward": (float(r["reward"]) - mean) / scale} for r in rows]


def rejection_sampling(rows: list[Row], **_: Any) -> list[Row]:
    """Best output per input; ties keep the first sampled."""
    out = []
    for group in group_by_input(rows):
        best = max(group, key=lambda r: float(r["reward"]))
        out.append({"input": best["input"], "output": best["output"], "reward": float(best["reward"])})
    return out


def conditional_sft(rows: list[Row], reward_template: str = "{input} <rm_score>: {reward} ", **_: Any) -> list[Row]:
    """Every row with its reward written into the input (two decimals, as OpenRLHF)."""
    out = []
    for row in rows:
        if not isinstance(row["input"], str):
            raise DataError("csft writes the reward into the prompt text: it needs text inputs, not chat messages")
        reward = f"{float(row['reward']):.2f}"
        text = reward_template.replace("{reward}", reward).replace("{input}", row["input"])
        out.append({"input": text, "output": row["output"], "reward": float(row["reward"])})
    return out


def iterative_dpo(rows: list[Row], **_: Any) -> list[Row]:
    """Highest- vs lowest-rewarded output per input; inputs whose outputs all score the same give no pair."""
    out, skipped = [], 0
    for group in group_by_input(rows):
        chosen = max(group, key=lambda r: float(r["reward"]))
        rejected = min(group, key=lambda r: float(r["reward"]))
        if float(chosen["reward"]) == float(rejected["reward"]):
            skipped += 1
            continue
        out.append(
            {
                "prompt": chosen["input"],
                "chosen": chosen["output"],
                "chosen_reward": float(chosen["reward"]),
                "rejected": rejected["output"],
                "rejected_reward": float(rejected["reward"]),
            }
        )
    if skipped:
        log.info("iter_dpo: %d input(s) had no reward difference between outputs and gave no pair", skipped)
    if not out:
        raise DataError("iter_dpo: no input had outputs with different rewards (sample more with --best_of_n)")
    return out


PROCESSORS: dict[str, Callable[..., list[Row]]] = {
    "rs": rejection_sampling,
    "csft": conditional_sft,
    "iter_dpo": iterative_dpo,
}


def post_process(
    name: str | None,
    rows: list[Row],
    *,
    reward_template: str = "{input} <rm_score>: {reward} ",
    normalize: bool = False,
) -> list[Row]:
    """Apply processor `name` (None: rows as they are); `normalize` first standardizes the rewards, so csft
    conditions on z-scores, as OpenRLHF's --normalize_reward."""
    if name is not None and name not in PROCESSORS:
        raise DataError(f"unknown post-processor {name!r} (one of {sorted(PROCESSORS)})")
    rows = normalize_rewards(rows) if normalize else rows
    return PROCESSORS[name](rows, reward_template=reward_template) if name is not None else rows
