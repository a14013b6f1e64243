"""Where a command that runs once (no training) writes its result: one flag per name the fork gave it."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg


@dataclass
class OutputArgs:
    _argument_group_name = "output"

    output_path: str | None = arg(
        None,
        "Where the result goes: the JSON report of an attack evaluation, the JSON Lines file of batch inference "
        "(one {input, output[, reward]} object per line), or the folder of a merged model (replaced atomically).",
    )
    output_file: str | None = arg(
        None,
        "Result JSON. Rare-output estimates: configuration, estimate, std_err, confidence interval, ESS, warnings "
        "and wall time. Forecasts: the fit and Q_p(n) of each model, with the plot next to it (same name, .png).",
    )
