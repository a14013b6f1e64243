"""forecast_rare_outputs: forecast the worst query's chance of eliciting a behaviour at deployment scale.

Per model in --pretrain: each query's elicitation probability p (keyword or target log-prob, or k samples), a
Gumbel-tail fit to ψ = -log(-log p) over the top --top_k_fit queries, and the forecast Q_p(n), the p of the worst
of n queries (Jones et al. 2025; docs/algorithms/forecast.md). Writes --output_file and a PNG next to it.

    repulse forecast_rare_outputs --output_file runs/forecast/forecast.json        # embedded tiny LM and prompts
    repulse forecast_rare_outputs --pretrain runs/sft/final,runs/repulse/final --elicitation_method \\
        repeated_sampling --k_samples 200 --top_k_fit 6 --output_file runs/forecast/compare.json
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from repulse.cli.runner import run_cli
from repulse.config.common import DataArgs, LoggingArgs, ModelArgs
from repulse.config.forecast import ForecastArgs
from repulse.config.output import OutputArgs
from repulse.config.parser import parse_groups, to_flat_dict
from repulse.infra.errors import UserError


class ForecastConfig(NamedTuple):
    model: ModelArgs
    data: DataArgs
    forecast: ForecastArgs
    output: OutputArgs
    logging: LoggingArgs


GROUPS = (ModelArgs, DataArgs, ForecastArgs, OutputArgs, LoggingArgs)
ONLY = {
    ModelArgs: ["pretrain", "bf16"],
    DataArgs: ["dataset", "dataset_probs", "input_key"],  # the query pools
    OutputArgs: ["output_file"],
    LoggingArgs: ["disable_progress_bar"],  # nothing is logged: no metric flags
}
DEFAULTS = {"input_key": "prompt", "batch_size": 32, "output_file": "forecast/forecast.json"}


def parse_args(argv: Sequence[str] | None = None) -> ForecastConfig:
    return ForecastConfig(*parse_groups(GROUPS, argv, description=__doc__, only=ONLY, defaults=DEFAULTS))


def models(pretrain: str | None) -> list[str | None]:
    """The --pretrain list; [None] means the embedded default."""
    return [p.strip() for p in pretrain.split(",") if p.strip()] if pretrain else [None]


def load_queries(data: DataArgs, args: ForecastArgs) -> list[str]:
    """--evaluation_set_size queries from the --dataset pools (blended by --dataset_probs)."""
    from repulse.data.prompts import draw_queries, load_query_pools

    name = data.dataset or embedded("default_dataset", "--dataset")("prompts")
    pools = load_query_pools(name.split(","), data.input_key)
    queries = draw_queries(pools, data.probabilities(), args.evaluation_set_size, args.random_seed)
    if len(queries) < args.top_k_fit:
        raise UserError(f"--top_k_fit {args.top_k_fit} needs at least that many queries; {name} has {len(queries)}")
    return queries


def embedded(attr: str, flag: str):
    """A function of the embedded assets, or a clear error naming the flag that replaces it."""
    try:
        return getattr(importlib.import_module("repulse.assets"), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"no {flag} given and the embedded default is missing: pass {flag}") from err


def keywords_of(args: ForecastArgs) -> list[str]:
    return args.keyword_list() or list(embedded("bad_words", "--keywords")())


def elicit(args: ForecastArgs, model, tokenizer, queries: list[str], bar):
    """log p per query, and the draws per query for repeated sampling (None otherwise); `bar(total, unit)` makes
    the progress bar of the work."""
    from repulse.estimation import elicitation as el

    if args.elicitation_method == "repeated_sampling":
        from repulse.generation.generate import SamplingParams, generate

        def sample(chunk: list[str], k: int) -> list[list[str]]:
            params = SamplingParams(
                max_new_tokens=args.gen_max_new_tokens,
                temperature=args.gen_temperature,
                top_p=args.gen_top_p,
                num_samples=k,
            )
            texts = generate(model, tokenizer, chunk, params, batch_size=len(chunk)).texts
            return [texts[i * k : (i + 1) * k] for i in range(len(chunk))]  # rows are grouped by prompt

        behaviour = el.keyword_behaviour(keywords_of(args))
        with bar(len(queries) * args.k_samples, "response") as done:
            result = el.sampled_log_probs(queries, args.k_samples, sample, behaviour, progress=done.update)
        return result.log_p, result.draws.tolist()
    query_ids = [tokenizer(q, add_special_tokens=True)["input_ids"] for q in queries]
    if args.elicitation_method == "logprob_specific":
        target = tokenizer(args.target_sequence, add_special_tokens=False)["input_ids"]
        if not target or tokenizer.unk_token_id in target:
            raise UserError(f"--target_sequence {args.target_sequence!r} is empty or not in the vocabulary")
        with bar(len(queries), "query") as done:
            return el.target_log_probs(model, query_ids, target, args.batch_size, progress=done.update), None
    sequences = el.keyword_token_sequences(tokenizer, keywords_of(args))
    if not sequences:
        raise UserError(f"none of the keywords {keywords_of(args)} is in the vocabulary (use --keywords)")
    with bar(len(queries) * len(el.prefix_free(sequences)), "continuation") as done:  # (query, keyword spelling)
        return el.keyword_log_probs(model, query_ids, sequences, args.batch_size, progress=done.update), None


def forecast_model(args: ForecastArgs, model_args: ModelArgs, pretrain: str | None, queries: list[str], bar) -> dict:
    import torch

    from repulse.estimation.forecast import fit_gumbel_tail, forecast_worst_query, scores_from_log_p
    from repulse.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(pretrain)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, ModelArgs(bf16=model_args.bf16), trainable=False)
    if torch.cuda.is_available():
        model.to("cuda")
    torch.manual_seed(args.random_seed)  # the same sampled responses for every model given the same weights
    log_p, draws = elicit(args, model, tokenizer, queries, bar)
    try:
        fit = fit_gumbel_tail(scores_from_log_p(log_p), args.top_k_fit)
        q_p = forecast_worst_query(fit, args.scales()).tolist()
    except ValueError as err:
        raise UserError(f"model {path}: {err}") from err
    extra = [{"k_samples": n} for n in draws] if draws else [{}] * len(queries)
    rows = [{"query": q, "log_p": lp, **e} for q, lp, e in zip(queries, log_p.tolist(), extra)]
    forecast = {str(n): q for n, q in zip(args.scales(), q_p)}
    return {"model": path, "fit": fit.as_dict(), "forecast_Q_p": forecast, "queries": rows}


def run(cfg: ForecastConfig) -> dict:
    from tqdm.auto import tqdm

    from repulse.infra.files import write_json_atomic
    from repulse.plotting.forecast import display_name, plot_forecasts

    args, queries, results = cfg.forecast, load_queries(cfg.data, cfg.forecast), []
    names = models(cfg.model.pretrain)
    for i, pretrain in enumerate(names, start=1):
        desc = f"elicit {display_name(pretrain) if pretrain else 'tiny_lm'} ({i}/{len(names)})"

        def bar(total: int, unit: str, desc: str = desc):
            return tqdm(
                total=total, unit=unit, desc=desc, disable=cfg.logging.disable_progress_bar, dynamic_ncols=True
            )

        results.append(forecast_model(args, cfg.model, pretrain, queries, bar))
    out = Path(cfg.output.output_file)
    png = plot_forecasts(out.with_suffix(".png"), args.scales(), results, method=args.elicitation_method)
    config = to_flat_dict(*cfg, only=ONLY) | {"forecast_scales": args.scales()}
    payload = {"config": config, "plot": str(png), "results": results}
    write_json_atomic(out, payload)
    last = args.scales()[-1]
    for res in results:
        print(
            f"forecast_rare_outputs: {res['model']}: Q_p({last:.0e}) = {res['forecast_Q_p'][str(last)]:.3g} "
            f"(R² {res['fit']['r2']:.3f}, top {args.top_k_fit} of {len(queries)} queries)"
        )
    print(f"forecast_rare_outputs: results in {out}, plot in {png}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: run(parse_args(a)), argv, "forecast_rare_outputs")


if __name__ == "__main__":
    raise SystemExit(main())
