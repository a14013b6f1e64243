"""Where a command that runs once (no training) writes its result: one flag per name the fork gave it."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg


@dataclass
class OutputArgs:
    _argument_group_name = "output"

    output_path: str | None = arg(
        None,
        "Where the result goes.",
        roles={
            **dict.fromkeys(
                ("evaluate_gcg", "evaluate_beast"),
                "Write the JSON report here (configuration, ASR, reward statistics, one row per target).",
            ),
            "batch_inference": "JSON Lines output: one {input, output[, reward]} object per line.",
            "lora_combiner": "Folder for the merged model and tokenizer (replaced atomically).",
        },
    )
    output_file: str | None = arg(
        None,
        "Result JSON.",
        roles={
            "estimate_rare_harmful_outputs": "Result JSON: configuration, estimate, std_err, confidence interval, "
            "ESS, warnings and wall time.",
            "forecast_rare_outputs": "Result JSON: the fit and Q_p(n) of each model; the plot goes next to it (same "
            "name, .png).",
        },
    )
