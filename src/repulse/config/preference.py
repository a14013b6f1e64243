"""Keys of preference-pair data (train_rm, train_dpo)."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg


@dataclass
class PreferenceKeys:
    _argument_group_name = "preference data keys"

    prompt_key: str | None = arg(
        "prompt", "JSON key of the prompt ('none', or a key the data lacks: chosen/rejected hold whole conversations)."
    )
    chosen_key: str = arg("chosen", "JSON key of the preferred response.")
    rejected_key: str = arg("rejected", "JSON key of the dispreferred response.")
    margin_key: str | None = arg(
        None, "Optional JSON key of a per-pair margin m of the reward-model loss -log sigmoid(r_c - r_r - m)."
    )

    def __post_init__(self) -> None:
        if self.prompt_key is not None and self.prompt_key.lower() in ("", "none"):
            self.prompt_key = None

    def columns(self) -> list[str]:
        return [k for k in (self.prompt_key, self.chosen_key, self.rejected_key, self.margin_key) if k]

    def dataset_kwargs(self) -> dict:
        return {
            "prompt_key": self.prompt_key,
            "chosen_key": self.chosen_key,
            "rejected_key": self.rejected_key,
            "margin_key": self.margin_key,
        }
