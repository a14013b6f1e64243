"""Flags of estimate_rare_harmful_outputs (low-probability estimation, docs/algorithms/lpe.md).

The command also takes --temperature and --seed of the sampling flags, and --output_file.
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import BatchArgs
from repulse.config.fields import arg, require

LPE_METHODS = ("itgis", "ceis", "mixture", "mhis", "bruteforce", "exact")
# Kept in step with repulse.estimation.distributions.DISTRIBUTIONS (config/ imports nothing from the package).
LPE_DISTRIBUTIONS = ("uniform", "hex", "camel", "caps", "english", "spanish", "icl", "ifelse", "indent")


@dataclass
class LPEArgs(BatchArgs):
    method: str = arg(
        "itgis",
        f"Estimator: {', '.join(LPE_METHODS)} (ceis: cross-entropy adaptive importance sampling, no gradient; "
        "mixture: D, the ITGIS and the ceis proposals in one; exact enumerates the whole input space).",
    )
    target_word: str | None = arg(
        None,
        "Target text (encoded without special tokens; may be several tokens, e.g. ' kill'). "
        "Default: the first word of the embedded bad-word list.",
    )
    distribution_name: str = arg("uniform", f"Input distribution D: {', '.join(LPE_DISTRIBUTIONS)}.")
    sequence_length: int = arg(8, "Input length L (tokens drawn from D before the target).")
    n_samples: int = arg(
        4096,
        "Inputs drawn (itgis, ceis, mixture: the first half of the batches only adapt the proposal and are left out "
        "of the estimate; MHIS: recorded chain states, burn-in excluded).",
    )
    itgis_decay_rate: float = arg(0.9, "ITGIS: decay d of the running gradient-score sum.")
    defensive_fraction: float | None = arg(
        None,
        "itgis, ceis, mixture: share of every batch drawn from D itself (the defensive mixture a·D + (1 - a)·q, "
        "whose importance ratios are at most 1/a). Default: 0 for itgis (the reference's proposal), 0.2 otherwise.",
    )
    mhis_burn_in: int = arg(64, "MHIS: chain steps discarded before recording (the reference default was 1024).")
    mhis_steps: int = arg(0, "MHIS: recorded steps per chain; > 0 overrides --n_samples with steps x --batch_size.")
    max_exact_inputs: int = arg(2_000_000, "exact / --compare_exact: refuse input spaces larger than this.")
    compare_exact: bool = arg(False, "Also enumerate the input space and report the exact P and the log10 error.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.method in LPE_METHODS, f"--method must be one of {', '.join(LPE_METHODS)}, got {self.method!r}")
        require(
            self.distribution_name in LPE_DISTRIBUTIONS,
            f"--distribution_name: unknown distribution {self.distribution_name!r} "
            f"(choose from {', '.join(LPE_DISTRIBUTIONS)})",
        )
        require(self.sequence_length >= 1, f"--sequence_length must be >= 1, got {self.sequence_length}")
        require(self.n_samples >= 1, f"--n_samples must be >= 1, got {self.n_samples}")
        require(0 <= self.itgis_decay_rate <= 1, f"--itgis_decay_rate must be in [0, 1], got {self.itgis_decay_rate}")
        if self.defensive_fraction is not None:
            require(
                0 <= self.defensive_fraction < 1,
                f"--defensive_fraction must be in [0, 1), got {self.defensive_fraction}",
            )
        require(self.mhis_burn_in >= 0, f"--mhis_burn_in must be >= 0, got {self.mhis_burn_in}")
        require(self.mhis_steps >= 0, f"--mhis_steps must be >= 0, got {self.mhis_steps}")
        require(self.max_exact_inputs >= 1, f"--max_exact_inputs must be >= 1, got {self.max_exact_inputs}")
        if self.method != "exact" and not (self.method == "mhis" and self.mhis_steps):
            require(
                self.n_samples % self.batch_size == 0,
                f"--n_samples {self.n_samples} must be a multiple of --batch_size {self.batch_size}",
            )
        if self.method in ("itgis", "ceis", "mixture"):
            require(
                self.n_samples >= 2 * self.batch_size,
                f"--method {self.method} needs --n_samples >= 2 x --batch_size (the first half of the batches only "
                f"adapt the proposal), got {self.n_samples} and {self.batch_size}",
            )

    def defensive(self) -> float:
        """The defensive mixture's share of D: --defensive_fraction, or the method's default."""
        if self.defensive_fraction is not None:
            return self.defensive_fraction
        return 0.0 if self.method == "itgis" else 0.2

    def samples(self) -> int:
        """The number of samples the estimate averages over (MHIS: --mhis_steps x --batch_size when set)."""
        if self.method == "mhis" and self.mhis_steps:
            return self.mhis_steps * self.batch_size
        return self.n_samples
