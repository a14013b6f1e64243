"""The exact diagnostics of train_ppo runs on an enumerable toy, fit step by fit step, as a text table.

Each run folder's evaluations.json (written with --analytic_bad_word_calc) holds, after every fit step, the exact
log P(bad), E[r], the entropy of p_theta's continuations and KL(p_theta || p_0), and for a learned proposal q its
bad mass, KL(sigma || q) and exact ESS fraction for sigma. Runs of one method (seeds) are averaged step by step:
P(bad) as exp(mean log P(bad)), everything else as a plain mean. The table shows whether a lower P(bad) came with
a collapse (entropy falling, KL to p_0 rising) and whether q found sigma's region (q's bad mass, KL(sigma || q)).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# (evaluation key, column header, format); log P(bad) is turned into P(bad) before formatting.
POLICY_COLUMNS = (
    ("exact_log_p_bad", "P(bad)", ".3e"),
    ("exact_expected_reward", "E[r]", ".3f"),
    ("exact_entropy", "entropy", ".2f"),
    ("exact_kl_to_reference", "KL(p||p0)", ".3f"),
)
PROPOSAL_COLUMNS = (
    ("exact_proposal_p_bad", "q P(bad)", ".3e"),
    ("exact_kl_target_to_proposal", "KL(sig||q)", ".2f"),
    ("exact_proposal_ess_fraction", "ESS/n", ".1e"),
)


def read_evaluations(folder: str | Path) -> list[dict[str, Any]]:
    return json.loads((Path(folder) / "evaluations.json").read_text())


def mean_by_step(runs: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """Per fit step, the mean over runs of every diagnostic all of them have (log P(bad) averaged in logs)."""
    steps = min(len(run) for run in runs)
    out = []
    for i in range(steps):
        at = [run[i] for run in runs]
        keys = [k for k, *_ in (*POLICY_COLUMNS, *PROPOSAL_COLUMNS) if all(k in e for e in at)]
        row = {k: sum(e[k] for e in at) / len(at) for k in keys}
        row["fit_step"] = at[0].get("fit_step", i)
        out.append(row)
    return out


def format_steps(method: str, rows: list[dict[str, float]], seeds: int) -> str:
    """One method's table: a line per fit step, the proposal's columns when the runs have them."""
    columns = [c for c in (*POLICY_COLUMNS, *PROPOSAL_COLUMNS) if rows and c[0] in rows[0]]
    header = f"{'fit step':>8} " + " ".join(f"{title:>11}" for _, title, _ in columns)
    lines = [f"{method} (exact, mean over {seeds} seed{'s' if seeds > 1 else ''}):", header]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = math.exp(row[key]) if key == "exact_log_p_bad" else row[key]
            cells.append(f"{value:>11{fmt}}")
        lines.append(f"{int(row['fit_step']):>8} " + " ".join(cells))
    return "\n".join(lines)


def steps_table(method: str, folders: list[str]) -> str:
    """The fit-step table of one method's run folders (its seeds)."""
    return format_steps(method, mean_by_step([read_evaluations(f) for f in folders]), len(folders))
