"""estimate_rare_harmful_outputs: the probability that a model emits a rare target right after a random input.

P = E_{x~D}[p(target | x)] over inputs x of --sequence_length tokens drawn from --distribution_name, by ITGIS,
CEIS, their mixture, MHIS, naive Monte Carlo (bruteforce) or exact enumeration of the input space. Every estimate
comes with a standard error, a 95% interval, its effective sample size (a warning says when the sample cannot be
trusted) and the wall time; --output_file gets a JSON document (docs/algorithms/lpe.md).

    repulse estimate_rare_harmful_outputs --method itgis --sequence_length 8 --n_samples 4096   # embedded tiny LM
    repulse estimate_rare_harmful_outputs --pretrain HuggingFaceTB/SmolLM-135M-Instruct --target_word " kill" \\
        --sequence_length 20 --temperature 5 --n_samples 65536 --batch_size 256 --output_file lpe.json
    repulse estimate_rare_harmful_outputs --method exact --distribution_name english --sequence_length 2
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import LoggingArgs, ModelArgs
from repulse.config.lpe import LPEArgs
from repulse.config.output import OutputArgs
from repulse.config.parser import parse_groups, to_flat_dict
from repulse.config.sampling import GenerationArgs
from repulse.infra.errors import UserError

log = logging.getLogger("repulse")


class LPEConfig(NamedTuple):
    model: ModelArgs
    lpe: LPEArgs
    sampling: GenerationArgs  # only --temperature and --seed: the estimators' T and draws
    output: OutputArgs
    progress: LoggingArgs  # only --disable_progress_bar: nothing else is logged


GROUPS = (ModelArgs, LPEArgs, GenerationArgs, OutputArgs, LoggingArgs)
ONLY = {GenerationArgs: ["temperature", "seed"], OutputArgs: ["output_file"], LoggingArgs: ["disable_progress_bar"]}
DEFAULTS = {"batch_size": 256, "temperature": 4.0}


def parse_args(argv: Sequence[str] | None = None) -> LPEConfig:
    return LPEConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY, defaults=DEFAULTS))


def default_target_word() -> str:
    try:
        from repulse.assets import bad_words

        words = list(bad_words())
    except (ImportError, OSError) as err:
        raise UserError(f"no --target_word given and no embedded bad-word list ({err}): pass --target_word") from err
    # Word-level tokenizers spell a word that follows other text with its leading space.
    return " " + words[0]


def encode_target(tokenizer, word: str) -> list[int]:
    ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
    if not ids:
        raise UserError(f"--target_word {word!r} encodes to no tokens")
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise UserError(f"--target_word {word!r} is not in the vocabulary (it encodes to {tokenizer.unk_token!r})")
    return ids


def run_method(args: LPEArgs, temperature: float, scorer, dist, generator, progress: bool):
    from repulse.estimation.crossentropy import estimate_ceis
    from repulse.estimation.importance import estimate_itgis
    from repulse.estimation.mhis import estimate_mhis
    from repulse.estimation.mixture import estimate_mixture
    from repulse.estimation.montecarlo import estimate_naive

    kw = {"n_samples": args.samples(), "batch_size": args.batch_size, "generator": generator, "progress": progress}
    tilt = {"temperature": temperature, "decay_rate": args.itgis_decay_rate, "defensive": args.defensive()}
    calls = {
        "itgis": lambda: estimate_itgis(scorer, dist, **tilt, **kw),
        "mixture": lambda: estimate_mixture(scorer, dist, **tilt, **kw),
        "ceis": lambda: estimate_ceis(scorer, dist, defensive=args.defensive(), **kw),
        "mhis": lambda: estimate_mhis(scorer, dist, temperature=temperature, burn_in=args.mhis_burn_in, **kw),
        "bruteforce": lambda: estimate_naive(scorer, dist, **kw),
        "exact": lambda: run_exact(args, scorer, dist, progress),
    }
    return calls[args.method]()


def run_exact(args: LPEArgs, scorer, dist, progress: bool):
    from repulse.estimation.montecarlo import estimate_exact

    batch = max(args.batch_size, 1024)
    return estimate_exact(scorer, dist, batch_size=batch, max_inputs=args.max_exact_inputs, progress=progress)


def check_enumerable(args: LPEArgs, dist) -> None:
    if args.method == "exact" or args.compare_exact:
        size = dist.num_inputs()
        if size > args.max_exact_inputs:
            sizes = " x ".join(map(str, dist.support_sizes()))
            raise UserError(
                f"--method exact: the input space has {size:.3g} inputs ({sizes}), over --max_exact_inputs "
                f"{args.max_exact_inputs}; use a shorter --sequence_length or another --method"
            )


def estimate(cfg: LPEConfig) -> dict:
    import torch

    from repulse.estimation.distributions import build_distribution
    from repulse.estimation.montecarlo import LMTargetScorer
    from repulse.infra.files import write_json_atomic
    from repulse.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    args = cfg.lpe
    path = resolve_model_path(cfg.model.pretrain)
    tokenizer = load_tokenizer(path, use_fast=not cfg.model.disable_fast_tokenizer)
    word = args.target_word if args.target_word is not None else default_target_word()
    target = encode_target(tokenizer, word)
    model = load_causal_lm(path, cfg.model, trainable=False)
    if torch.cuda.is_available():
        model.to("cuda")
    vocab = int(model.get_input_embeddings().weight.shape[0])
    try:
        dist = build_distribution(args.distribution_name, tokenizer, args.sequence_length, vocab)
    except ValueError as err:
        raise UserError(f"--distribution_name {args.distribution_name}: {err}") from err
    check_enumerable(args, dist)
    scorer = LMTargetScorer(model, target)
    progress = not cfg.progress.disable_progress_bar
    generator = torch.Generator().manual_seed(cfg.sampling.seed)
    result = run_method(args, cfg.sampling.temperature, scorer, dist, generator, progress)
    exact = result if args.method == "exact" else None
    if exact is None and args.compare_exact:
        exact = run_exact(args, scorer, dist, progress)
    payload = {
        "config": to_flat_dict(*cfg, only=ONLY),
        "model": path,
        "target_word": word,
        "target_ids": target,
        "target_tokens": tokenizer.convert_ids_to_tokens(target),
        "distribution": {"name": dist.name, "description": dist.description, "support_sizes": dist.support_sizes()},
        **result.as_dict(),
    }
    if exact is not None:
        payload["exact"] = exact.estimate
        payload["log10_error"] = log10_error(result.estimate, exact.estimate)
    if cfg.output.output_file:
        write_json_atomic(cfg.output.output_file, payload)
    print_summary(payload, cfg.output.output_file)
    return payload


def log10_error(estimate: float, truth: float) -> float:
    return abs(math.log10(estimate / truth)) if estimate > 0 and truth > 0 else float(estimate != truth) * math.inf


def print_summary(p: dict, output_file: str | None) -> None:
    low, high = p["ci95"]
    trust = f", ESS {p['ess']:.0f}" if "ess" in p else ""
    if math.isfinite(p.get("pareto_k", math.nan)):
        trust += f", Pareto k {p['pareto_k']:.2f}"
    extra = f", exact {p['exact']:.4g}" if "exact" in p else ""
    where = f"; results in {output_file}" if output_file else ""
    print(
        f"estimate_rare_harmful_outputs: {p['method']} P({p['target_word']!r} | {p['distribution']['name']} x "
        f"{p['config']['sequence_length']}) = {p['estimate']:.4g} ± {p['std_err']:.2g} (95% CI {low:.3g} to "
        f"{high:.3g}{trust}){extra} (n={p['n_samples']}, {p['n_model_rows']} model rows, "
        f"{p['wall_time_s']:.2f} s){where}"
    )
    for warning in p["warnings"]:
        log.warning("warning: %s", warning)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: estimate(parse_args(a)), argv, "estimate_rare_harmful_outputs")


if __name__ == "__main__":
    raise SystemExit(main())
