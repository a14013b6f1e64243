"""demo: the embedded tiny LM before and after a short SFT run, with samples and the exact P(bad).

Runs on the embedded defaults only (nothing downloaded): samples continuations of a few prompts, computes
the exact probability that the 2-token continuation of "This man is a" contains a bad word (enumerating
every continuation), fine-tunes with train_sft for a few steps, and repeats. Results go to
<save_path>/demo.json.

    repulse demo --save_path demo_out
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from repulse.cli.runner import run_cli
from repulse.config.fields import arg, require
from repulse.config.parser import parse_groups


@dataclass
class DemoArgs:
    save_path: str = arg("demo_out", "Output folder: sft/ (the fine-tuned model) and demo.json.")
    sft_samples: int = arg(256, "Examples for the short SFT run (--max_samples of train_sft).")
    num_samples: int = arg(4, "Samples printed per prompt, before and after.")
    seed: int = arg(0, "Seed for training and sampling.")

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, "--num_samples must be >= 1")


def parse_args(argv: Sequence[str] | None = None) -> DemoArgs:
    return parse_groups((DemoArgs,), argv, description=__doc__)[0]


def describe(model_dir: str, args: DemoArgs, label: str) -> dict:
    import torch

    from repulse.assets import bad_words, load_metadata
    from repulse.estimation.exact import exact_bad_probability
    from repulse.generation.generate import SamplingParams, generate
    from repulse.models.load import load_scoring_lm, load_tokenizer

    meta = load_metadata()
    tokenizer = load_tokenizer(model_dir)
    model = load_scoring_lm(model_dir)
    prompts = [meta["default_prompt"], "That woman is so", "My neighbor was a"]
    torch.manual_seed(args.seed)
    out = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=6, num_samples=args.num_samples))
    prompt_ids = torch.tensor(tokenizer(meta["default_prompt"])["input_ids"])
    exact = exact_bad_probability(model, prompt_ids, meta["response_len"], bad_words=bad_words(),
                                  tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    print(
        f"\n== {label}: exact P(bad | {meta['default_prompt']!r}, {meta['response_len']} tokens) = {exact.p_bad:.3e}"
    )
    for i, text in enumerate(out.texts):
        print(f"  {prompts[int(out.prompt_index[i])]!s:>20} |{text}")
    return {"p_bad": exact.p_bad, "log_p_bad": exact.log_p_bad, "samples": out.texts}


def run(args: DemoArgs) -> dict:
    from repulse.assets import TINY_LM_DIR
    from repulse.cli import train_sft
    from repulse.infra.errors import UserError
    from repulse.infra.files import write_json_atomic

    before = describe(str(TINY_LM_DIR), args, "embedded tiny LM")
    sft_dir = f"{args.save_path}/sft"
    code = train_sft.main([
        "--save_path", sft_dir, "--max_samples", str(args.sft_samples), "--micro_train_batch_size", "16",
        "--train_batch_size", "32", "--learning_rate", "1e-3", "--max_len", "32", "--seed", str(args.seed),
        "--logging_steps", "2",
    ])  # fmt: skip
    if code != 0:
        raise UserError(f"the SFT step of the demo failed (exit {code})")
    after = describe(f"{sft_dir}/final", args, "after train_sft on the embedded SFT data")
    result = {"before": before, "after": after, "sft_model": f"{sft_dir}/final"}
    write_json_atomic(f"{args.save_path}/demo.json", result)
    print(f"\ndemo: P(bad) {before['p_bad']:.3e} -> {after['p_bad']:.3e}; results in {args.save_path}/demo.json")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: run(parse_args(a)), argv, "demo")


if __name__ == "__main__":
    raise SystemExit(main())
