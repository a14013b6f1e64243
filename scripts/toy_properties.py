"""Measure the embedded toy exactly: every 2-token continuation of "This man is a", scored by the tiny RM.

    python scripts/toy_properties.py [--assets src/repulse/assets] [--out props.json]

Prints (and writes) what docs/toy.md reports: the LM's P(bad) and entropy, the reward distribution among clean
and bad continuations under p_0, how much of p_0's mass sits near the maximum reward, the clean mass that scores
like a bad word, the bad mass the RM cannot see, and the share of sigma ∝ p_0 e^{beta r} on bad words for
beta = -1, -5, -10 (with KL(sigma || p_0) and the exact ESS of p_0 as a proposal for sigma). Rewards are read the
way RL reads them (prompt + decoded response + EOS through `repulse.rl.rewards.LocalRewardModel`), with the RM's
stored normalization applied. Builds on any assets folder with tiny_lm/, tiny_rm/ and bad_words.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
PROMPT = "This man is a"
BETAS = (-1.0, -5.0, -10.0)
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def weighted_quantiles(values, weights, qs=QUANTILES) -> dict[str, float]:
    import torch

    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0)
    cum = cum / cum[-1]
    picks = [int(torch.searchsorted(cum, torch.tensor(q, dtype=cum.dtype)).clamp(max=len(cum) - 1)) for q in qs]
    return {f"q{round(q * 100):02d}": round(float(values[order][i]), 3) for q, i in zip(qs, picks)}


def glued_first_bad(space, tokenizer, bad_words):
    """[N] bool: the response starts with a bad word without its leading space, which the RM sees glued to the
    prompt's last word ("afuck" -> <unk>) while the whole-word metric counts it."""
    import torch

    words = {w.lower() for w in bad_words}
    first = [tokenizer.convert_ids_to_tokens(int(i)) for i in space.responses[:, 0]]
    return torch.tensor([t.lower() in words for t in first]) & space.bad


def measure(assets: Path, threshold: float | None = None) -> dict:
    """The toy's exact properties (see the module docstring) as a JSON-ready dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repulse.config.common import ModelArgs
    from repulse.evaluation import diagnostics as diag
    from repulse.models.reward import load_reward_model
    from repulse.rl.rewards import LocalRewardModel

    tokenizer = AutoTokenizer.from_pretrained(assets / "tiny_lm")
    lm = AutoModelForCausalLM.from_pretrained(assets / "tiny_lm", dtype=torch.float32).eval()
    rm = load_reward_model(str(assets / "tiny_rm"), ModelArgs())
    bad_words = [w.strip() for w in (assets / "bad_words.txt").read_text().splitlines() if w.strip()]
    if threshold is None:
        threshold = json.loads((assets / "assets.json").read_text())["rm_threshold"]
    source = LocalRewardModel(rm, tokenizer, batch_size=2048)
    space = diag.build_space(lm, tokenizer, PROMPT, 2, bad_words=bad_words, reward_source=source)
    log_p = diag.leaf_log_probs(lm, space)
    p, r, bad = log_p.exp(), space.rewards, space.bad
    clean = ~bad
    out = {
        "prompt": PROMPT,
        "n_continuations": len(space),
        "p_bad": diag.mass(log_p, bad),
        "entropy_nats": diag.entropy(log_p),
        "expected_reward": float((p * r).sum()),
        "reward_max": float(r.max()),
        "p0_mass_within_0.05_of_max": float(p[r > r.max() - 0.05].sum()),
        "p0_mass_within_1_of_max": float(p[r > r.max() - 1].sum()),
        "clean_reward_quantiles": weighted_quantiles(r[clean], p[clean]),
        "bad_reward_quantiles": weighted_quantiles(r[bad], p[bad]),
        "threshold": threshold,
        "clean_mass_below_threshold": float(p[clean & (r < threshold)].sum()),
        "clean_count_below_threshold": int((clean & (r < threshold)).sum()),
        "clean_mass_below_bad_median": float(p[clean & (r < weighted_quantiles(r[bad], p[bad])["q50"])].sum()),
        "bad_mass_at_or_above_threshold": float(p[bad & (r >= threshold)].sum()),
        "bad_mass_glued_first_word": float(p[glued_first_bad(space, tokenizer, bad_words)].sum()),
    }
    for beta in BETAS:
        log_sigma = diag.tilted_log_target(log_p, r, beta)
        out[f"beta_{beta:g}"] = {
            "sigma_p_bad": diag.mass(log_sigma, bad),
            "kl_sigma_to_p0": diag.kl_divergence(log_sigma, log_p),
            "ess_fraction_of_p0": diag.ess_fraction(log_sigma, log_p),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, default=REPO / "src" / "repulse" / "assets")
    parser.add_argument("--threshold", type=float, default=None, help="default: the assets' rm_threshold")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    props = measure(args.assets.resolve(), args.threshold)
    text = json.dumps(props, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
