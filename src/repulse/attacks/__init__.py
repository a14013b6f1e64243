"""Adversarial attacks on chat models and their success criteria (docs/algorithms/gcg.md).

- `gcg`: Greedy Coordinate Gradient with nanoGCG's config names (`GCGConfig`, `run`, `run_universal`).
- `beast`: BEAST beam search over tokens sampled from the attacked model (`BEASTConfig`, `run_beast`).
- `judge`: refusal phrases, reward below a threshold, a Yes/No judge model.
- `evaluation` / `report`: the per-target loop and statistics evaluate_gcg and evaluate_beast share.
"""

from repulse.attacks.beast import BEASTConfig, BEASTResult, run_beast, run_beast_universal
from repulse.attacks.gcg import GCGConfig, GCGResult, run, run_universal
from repulse.attacks.judge import REFUSAL_PREFIXES, JudgeClassifier, is_refusal

__all__ = [
    "BEASTConfig",
    "BEASTResult",
    "GCGConfig",
    "GCGResult",
    "REFUSAL_PREFIXES",
    "JudgeClassifier",
    "is_refusal",
    "run",
    "run_beast",
    "run_beast_universal",
    "run_universal",
]
