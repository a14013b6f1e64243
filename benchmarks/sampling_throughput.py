"""Sampling: repulse's KV-cached loop (generation/stepwise.py) against Hugging Face `generate`, and its draw.

Two measurements per model, in one process, the peers alternating, best of --repeats:
- draw: one token per row of a [--rows, V] probability table, torch.multinomial against repulse's
  `sample_categorical` (inversion of the float64 cumulative sum);
- sample: --rows samples of up to --new_tokens tokens after "This man is a" at temperature 1 (exact ancestral
  sampling), `model.generate(do_sample=True, num_return_sequences=rows)` against `sample_stepwise`.

    python benchmarks/sampling_throughput.py                    # the embedded tiny LM
    python benchmarks/sampling_throughput.py --model smollm2 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, result_path, set_offline_env, smollm2_dir, write_json_atomic  # noqa: E402

PROMPT = "This man is a"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--rows", type=int, default=64, help="samples per call (rows of the draw table)")
    p.add_argument("--new_tokens", type=int, default=16, help="max new tokens per sample")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per peer (best reported)")
    p.add_argument("--output", default=None, help="default: results/sampling_throughput_<model>.json")
    args = p.parse_args(argv)
    if min(args.rows, args.new_tokens, args.repeats) < 1:
        p.error("--rows, --new_tokens and --repeats must be >= 1")
    return args


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from repulse.generation.generate import SamplingParams, encode_prompts
    from repulse.generation.stepwise import sample_categorical, sample_stepwise
    from repulse.models.load import load_scoring_lm, load_tokenizer

    if args.model == "tiny":
        from repulse.assets import TINY_LM_DIR

        path = str(TINY_LM_DIR)
    else:
        path = str(smollm2_dir())
    model, tok = load_scoring_lm(path), load_tokenizer(path, padding_side="left")
    vocab = model.get_output_embeddings().weight.shape[0]
    probs = torch.softmax(torch.randn(args.rows, vocab, generator=torch.Generator().manual_seed(0)), -1)
    ids, mask = encode_prompts(tok, [PROMPT])
    params = SamplingParams(max_new_tokens=args.new_tokens, num_samples=args.rows)

    def hf() -> None:
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.new_tokens,
                num_return_sequences=args.rows,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )

    pairs = {
        "draw": (lambda: torch.multinomial(probs, 1), lambda: sample_categorical(probs)),
        "sample": (hf, lambda: sample_stepwise(model, tok, ids, mask, params)),
    }
    rows = []
    for what, (peer, ours) in pairs.items():
        peer_s, ours_s = [], []
        for r in range(2):  # alternate the order
            order = [(ours_s, ours), (peer_s, peer)] if r % 2 == 0 else [(peer_s, peer), (ours_s, ours)]
            for times, fn in order:
                times.append(best_time(fn, args.repeats))
        peer_name = "torch.multinomial" if what == "draw" else "HF generate"
        ours_name = "sample_categorical" if what == "draw" else "sample_stepwise"
        rows.append(
            {
                "what": what,
                "model": args.model,
                "vocab": vocab,
                "peer": peer_name,
                "ours": ours_name,
                "peer_ms": 1e3 * min(peer_s),
                "ours_ms": 1e3 * min(ours_s),
                "speedup": min(peer_s) / min(ours_s),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    set_offline_env()
    args = parse_args(argv)
    rows = measure(args)
    columns = [
        ("what", "measure", ""),
        ("model", "model", ""),
        ("vocab", "vocab", "d"),
        ("peer", "peer", ""),
        ("peer_ms", "peer ms", ".2f"),
        ("ours", "repulse", ""),
        ("ours_ms", "repulse ms", ".2f"),
        ("speedup", "speedup", ".2f"),
    ]
    print(format_table(rows, columns))
    out = args.output or str(result_path(f"sampling_throughput_{args.model}"))
    write_json_atomic(
        out,
        {
            "benchmark": "sampling_throughput",
            "settings": vars(args),
            "rows": rows,
            "machine": machine_info(("torch", "transformers")),
        },
    )
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
