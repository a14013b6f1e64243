"""Flags of forecast_rare_outputs (forecasting rare behaviours, docs/algorithms/forecast.md).

The command also takes --pretrain and --bf16 of the model flags, --dataset, --dataset_probs and --input_key of the
data flags (the query pool), and --output_file.
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import BatchArgs
from repulse.config.fields import arg, require

ELICITATION_METHODS = ("logprob_keyword", "logprob_specific", "repeated_sampling")


@dataclass
class ForecastArgs(BatchArgs):
    _argument_group_name = "forecast"

    evaluation_set_size: int = arg(100, "Queries m drawn (without replacement, --random_seed) from the pool.")
    random_seed: int = arg(42, "Seed for the query subset and the sampled responses.")
    elicitation_method: str = arg("logprob_keyword", f"How p(query) is estimated: {', '.join(ELICITATION_METHODS)}.")
    keywords: str | None = arg(
        None, "Comma-separated behaviour keywords (logprob_keyword, repeated_sampling). Default: embedded bad words."
    )
    target_sequence: str | None = arg(None, "logprob_specific: the exact output whose probability is p(query).")
    k_samples: int = arg(100, "repeated_sampling: responses drawn per query (really k; the reference drew 1).")
    gen_temperature: float = arg(1.0, "repeated_sampling: sampling temperature.")
    gen_top_p: float = arg(1.0, "repeated_sampling: nucleus top-p.")
    gen_max_new_tokens: int = arg(32, "repeated_sampling: response length limit (the reference used 256).")
    top_k_fit: int = arg(10, "Fit the Gumbel tail on this many highest elicitation scores.")
    forecast_scales: str = arg("1e3,1e4,1e5,1e6", "Comma-separated deployment sizes n for the forecast Q_p(n).")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.elicitation_method in ELICITATION_METHODS,
            f"--elicitation_method must be one of {', '.join(ELICITATION_METHODS)}, got {self.elicitation_method!r}",
        )
        if self.elicitation_method == "logprob_specific":
            require(
                bool(self.target_sequence), "--target_sequence is required by --elicitation_method logprob_specific"
            )
        require(self.evaluation_set_size >= 2, f"--evaluation_set_size must be >= 2, got {self.evaluation_set_size}")
        require(self.top_k_fit >= 2, f"--top_k_fit must be >= 2, got {self.top_k_fit}")
        require(
            self.top_k_fit <= self.evaluation_set_size,
            f"--top_k_fit {self.top_k_fit} must be <= --evaluation_set_size {self.evaluation_set_size}",
        )
        require(self.k_samples >= 1, f"--k_samples must be >= 1, got {self.k_samples}")
        require(self.gen_temperature > 0, f"--gen_temperature must be > 0, got {self.gen_temperature}")
        require(0 < self.gen_top_p <= 1, f"--gen_top_p must be in (0, 1], got {self.gen_top_p}")
        require(self.gen_max_new_tokens >= 1, f"--gen_max_new_tokens must be >= 1, got {self.gen_max_new_tokens}")
        self.scales()

    def scales(self) -> list[int]:
        """--forecast_scales as integers >= 1."""
        try:
            values = [int(float(s)) for s in self.forecast_scales.split(",") if s.strip()]
        except ValueError:
            values = []
        require(
            bool(values) and all(v >= 1 for v in values),
            f"--forecast_scales {self.forecast_scales!r}: expected comma-separated numbers >= 1, e.g. 1e3,1e4",
        )
        return values

    def keyword_list(self) -> list[str] | None:
        return [k.strip() for k in self.keywords.split(",") if k.strip()] if self.keywords else None
