"""Build the embedded tiny defaults under src/repulse/assets: seeded, deterministic, a few minutes on 2 CPU cores.

    python scripts/build_assets.py [--out src/repulse/assets] [--seed 0] [--data-only]

1. a synthetic corpus from the seeded grammar in `asset_grammar.py`, with rare planted bad words;
2. a word-level tokenizer (GPT-2-like leading-space words, ChatML-style chat template);
3. a tiny GPT-2 LM trained with the project's own `train_sft`;
4. a tiny reward model trained with the project's own `train_rm` on Bradley-Terry pairs drawn from a graded latent
   toxicity score (`asset_reward.py`), its scores calibrated to that score's units, plus a score threshold;
5. tiny datasets for every format under data/, and assets.json with the metadata and the toy's exact properties
   (`toy_properties.py`; docs/toy.md explains them).

`--data-only` stops after the datasets and the tokenizer (seconds): the tests use it to check determinism.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # the build never needs a hub; without this a missing file hangs ~1 min
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread: as fast as two for a 64-wide model, many times faster on a busy machine (OpenMP threads spin
# against each other), and the float reductions no longer depend on the core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asset_grammar as grammar  # noqa: E402
import asset_reward as reward  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "repulse" / "assets"
DEFAULT_PROMPT = "This man is a"
RESPONSE_LEN = 2
# The corpus size and planted bad rate set the LM's P(bad). The LM ends below the planted rate (train_sft's Adam
# betas (0.9, 0.95) damp the rare updates that push bad tokens up: 1.2e-3 planted gave P(bad) 2.7e-4), so 3e-3 of
# the texts carry a bad word to land near P(bad) = 1e-3 for "This man is a" + 2 tokens.
CORPUS_SIZE = 60_000
BAD_RATE = 3e-3
LM_EPOCHS = 3
# GPT-2 shape of the tiny LM (and of the RM, which starts from it): 2 heads of 32, since vLLM's CPU attention
# rejects heads of 16.
LM_SHAPE = {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64}
RM_PAIRS = 40_000
RM_EPOCHS = 3
CALIBRATION_ROWS = 4_000
MAX_LEN = 32

EOS, PAD, UNK, IM_START, IM_END, STEP_MARKER = "<|endoftext|>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "ки"
SPECIAL_TOKENS = (EOS, PAD, UNK, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
JSONL_FILES = {
    "corpus": "corpus.jsonl",
    "sft": "sft.jsonl",
    "preference": "preference.jsonl",
    "unpaired": "unpaired.jsonl",
    "prm": "prm.jsonl",
    "prompts": "prompts.jsonl",
    "heldout_prompts": "heldout_prompts.jsonl",
    "distill": "distill.jsonl",
    "negative": "negative.jsonl",
    "chat": "chat.jsonl",
    "heldout_pairs": "heldout_pairs.jsonl",
}
CSV_FILES = {"behaviors": ("behaviors.csv", ("goal", "target")), "strings": ("strings.csv", ("target",))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="assets folder to (re)write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-only", action="store_true", help="only the datasets and the tokenizer")
    return parser.parse_args(argv)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    # QUOTE_ALL keeps the targets' leading spaces visible and safe from readers that strip fields.
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_datasets(data_dir: Path, datasets: dict[str, list[dict]]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for kind, name in JSONL_FILES.items():
        write_jsonl(data_dir / name, datasets[kind])
    for kind, (name, columns) in CSV_FILES.items():
        write_csv(data_dir / name, datasets[kind], columns)


def texts_of(rows: list[dict]) -> list[str]:
    """Every string value in the rows (chat messages and label lists included)."""
    texts: list[str] = []
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts += [grammar.format_chat(value)] if value and isinstance(value[0], dict) else value
    return texts


def collect_pre_tokens(texts: list[str]) -> set[str]:
    """The byte-level pre-tokens of the texts, with the special tokens and the step marker cut out first."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = re.compile("|".join(re.escape(t) for t in (*SPECIAL_TOKENS, STEP_MARKER)))
    pieces: set[str] = set()
    for text in texts:
        for part in specials.split(text):
            pieces.update(piece for piece, _ in pre.pre_tokenize_str(part))
    return pieces


def build_tokenizer(texts: list[str]):
    """A word-level tokenizer over byte-level pre-tokens: GPT-2's " word" tokens, so decode() is lossless."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = sorted(collect_pre_tokens(texts))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, STEP_MARKER, *pieces])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # The PRM step marker is an ordinary (non-special) token so that decode() keeps it, as in Math-Shepherd.
    backend.add_tokens([AddedToken(STEP_MARKER, special=False, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def check_tokenizer(tokenizer, texts: list[str]) -> None:
    """Fail the build on an unknown token, a lossy decode, or a bad word that is not one whole-word token."""
    if len(tokenizer) > 512:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens (> 512)")
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id in ids or tokenizer.decode(ids) != text:
            raise SystemExit(f"tokenizer cannot round-trip {text!r}")
    for word in grammar.BAD_WORDS:
        for variant in (word, " " + word):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(ids) != 1 or tokenizer.decode(ids) != variant:
                raise SystemExit(f"bad word {variant!r} is not a single whole-word token: {ids}")


def build_data(seed: int) -> tuple[dict[str, list[dict]], list[dict]]:
    """(shipped datasets, full LM training corpus), all from `seed`."""
    datasets = grammar.build_datasets(seed)
    # Every prompt (held-out ones too) is fair game for pretraining: held-out only means unseen in RL/RM data.
    corpus = grammar.build_corpus(random.Random(seed + 1), grammar.list_prompts(), CORPUS_SIZE, BAD_RATE)
    datasets["corpus"] = corpus[:300]
    return datasets, corpus


def build_rm_data(seed: int, tokenizer) -> tuple[list[dict], list[dict]]:
    """(RM training pairs on the training prompts, calibration rows on the held-out prompts), from `seed`.

    They hold random token runs, decoded: built after the tokenizer and never fed to it (a glued "aHer" must stay
    an unknown string, as it is when RL scores such a sample).
    """
    train_prompts, heldout_prompts = grammar.split_prompts(seed)
    pairs = reward.build_reward_pairs(random.Random(seed + 2), tokenizer, train_prompts, RM_PAIRS)
    calibration = reward.build_calibration_rows(random.Random(seed + 3), tokenizer, heldout_prompts, CALIBRATION_ROWS)
    return pairs, calibration


def build_tokenizer_for(datasets: dict[str, list[dict]], corpus: list[dict]):
    texts = grammar.lexicon() + texts_of(corpus)
    for rows in datasets.values():
        texts += texts_of(rows)
    tokenizer = build_tokenizer(texts)
    check_tokenizer(tokenizer, [t for t in dict.fromkeys(texts) if t.strip()])
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    out: Path = args.out.resolve()
    datasets, corpus = build_data(args.seed)
    tokenizer = build_tokenizer_for(datasets, corpus)
    write_datasets(out / "data", datasets)
    (out / "bad_words.txt").write_text("".join(w + "\n" for w in grammar.BAD_WORDS), encoding="utf-8")
    print(f"[build_assets] data and a {len(tokenizer)}-token tokenizer in {time.time() - start:.1f}s")
    tokenizer.save_pretrained(out / "tiny_lm")
    if args.data_only:
        return 0
    rm_data = build_rm_data(args.seed, tokenizer)
    with tempfile.TemporaryDirectory(prefix="repulse-assets-") as work:
        metadata = build_models(Path(work), out, tokenizer, corpus, rm_data, datasets["heldout_pairs"], args.seed)
    write_metadata(out, args.seed, start, metadata)
    print(f"[build_assets] done in {time.time() - start:.0f}s: {json.dumps(metadata)}")
    return 0


def init_lm(tokenizer, seed: int, path: Path) -> None:
    """A seeded GPT-2-architecture LM without dropout: sampling-time and training-time log-probs then agree."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    ids["pad_token_id"] = tokenizer.pad_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        **LM_SHAPE,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **ids,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def run_cli(module: str, argv: list[str]) -> None:
    """Run one of the project's own training commands in-process, as a user would from the shell."""
    import importlib

    print(f"[build_assets] python -m {module} {' '.join(argv)}")
    status = importlib.import_module(module).main(argv)
    if status not in (0, None):
        raise SystemExit(f"{module} exited with status {status}")


def train_lm(work: Path, tokenizer, corpus: list[dict], seed: int) -> Path:
    init_lm(tokenizer, seed, work / "init_lm")
    write_jsonl(work / "corpus.jsonl", corpus)
    run_cli(
        "repulse.cli.train_sft",
        [
            "--pretrain",
            str(work / "init_lm"),
            "--dataset",
            str(work / "corpus.jsonl"),
            "--input_key",
            "text",
            "--pretrain_mode",
            "--max_len",
            str(MAX_LEN),
            "--max_epochs",
            str(LM_EPOCHS),
            "--micro_train_batch_size",
            "64",
            "--train_batch_size",
            "64",
            "--learning_rate",
            "3e-3",
            "--lr_scheduler",
            "cosine_with_min_lr",
            "--lr_warmup_ratio",
            "0.05",
            "--seed",
            str(seed),
            "--save_path",
            str(work / "sft"),
            "--logging_steps",
            "50",
        ],
    )
    return work / "sft" / "final"


def train_rm(work: Path, lm_dir: Path, pairs: list[dict], seed: int) -> Path:
    write_jsonl(work / "pairs.jsonl", pairs)
    run_cli(
        "repulse.cli.train_rm",
        [
            "--pretrain",
            str(lm_dir),
            "--dataset",
            str(work / "pairs.jsonl"),
            "--prompt_key",
            "prompt",
            "--chosen_key",
            "chosen",
            "--rejected_key",
            "rejected",
            "--max_len",
            str(MAX_LEN),
            "--max_epochs",
            str(RM_EPOCHS),
            "--micro_train_batch_size",
            "64",
            "--train_batch_size",
            "64",
            "--learning_rate",
            "1e-3",
            "--loss",
            "sigmoid",
            "--value_head_prefix",
            "score",
            "--lr_scheduler",
            "cosine_with_min_lr",
            "--lr_warmup_ratio",
            "0.05",
            "--disable_progress_bar",
            "--seed",
            str(seed),
            "--save_path",
            str(work / "rm"),
        ],
    )
    return work / "rm" / "final"


def score_texts(rm_dir: Path, tokenizer, prompts: list[str], completions: list[str]) -> list[float]:
    """RM scores of prompt + completion tokenized together (EOS appended, as in training), normalised."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from repulse.data.tokenize import encode_pair
    from repulse.models.reward import sequence_rewards

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).eval()
    encoded = [encode_pair(tokenizer, p, c, MAX_LEN)[0] for p, c in zip(prompts, completions)]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in encoded])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded])
    with torch.no_grad():
        return sequence_rewards(model, input_ids, mask, "score").tolist()


def calibrate_rm(rm_dir: Path, tokenizer, rows: list[dict]) -> dict:
    """Fit latent score ~ a * raw RM score + b on the calibration rows and store it as the RM's normalization
    ((raw - mean) / std with mean = -b / a, std = 1 / a), so every consumer reads scores in the latent's units.

    Bradley-Terry training fixes score differences only; this fixes the offset (0 = the classifier's boundary)
    and undoes the scale the RM under-fits.
    """
    import numpy as np
    from transformers import AutoConfig

    raw = np.array(score_texts(rm_dir, tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows]))
    target = np.array([r["score"] for r in rows])
    slope, intercept = np.polyfit(raw, target, 1)
    if slope <= 0:
        raise SystemExit(f"the reward model's scores do not follow the latent score (slope {slope:.3f})")
    config = AutoConfig.from_pretrained(rm_dir)
    config.normalize_reward, config.mean, config.std = True, float(-intercept / slope), float(1 / slope)
    config.save_pretrained(rm_dir)
    fitted = slope * raw + intercept
    return {
        "rm_calibration_rows": len(rows),
        "rm_calibration_rmse": round(float(np.sqrt(np.mean((fitted - target) ** 2))), 4),
        "rm_calibration_corr": round(float(np.corrcoef(raw, target)[0, 1]), 4),
        "rm_latent_score_sd": round(float(target.std()), 4),
    }


def evaluate_rm(rm_dir: Path, tokenizer, pairs: list[dict]) -> dict:
    """Held-out pair accuracy and a threshold halfway between the clean and bad score tails."""
    import numpy as np

    prompts = [row["prompt"] for row in pairs]
    clean = np.array(score_texts(rm_dir, tokenizer, prompts, [row["chosen"] for row in pairs]))
    bad = np.array(score_texts(rm_dir, tokenizer, prompts, [row["rejected"] for row in pairs]))
    threshold = float((np.quantile(clean, 0.01) + np.quantile(bad, 0.99)) / 2)
    return {
        "rm_threshold": round(threshold, 4),
        "rm_heldout_accuracy": float((clean > bad).mean()),
        "rm_heldout_bad_below_threshold": float((bad < threshold).mean()),
        "rm_heldout_clean_above_threshold": float((clean > threshold).mean()),
        "rm_heldout_pairs": len(pairs),
        "rm_heldout_clean_q01": round(float(np.quantile(clean, 0.01)), 4),
        "rm_heldout_bad_q99": round(float(np.quantile(bad, 0.99)), 4),
        "rm_score_scale": "calibrated to the latent score (config mean/std, applied by sequence_rewards)",
    }


def bad_token_ids(tokenizer, bad_words) -> list[int]:
    """Ids of every token that decodes to a bad word (with or without its leading space)."""
    words = {w.lower() for w in bad_words}
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().lower() in words]


def brute_force_p_bad(model, prompt_ids: list[int], bad_ids: list[int], eos_id: int) -> float:
    """P(a bad token among the next 2) by enumeration; sampling stops at EOS, so no second token after it."""
    import torch

    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt_ids])).logits[0, -1].double(), -1).exp()
        good = [v for v in range(first.numel()) if v not in set(bad_ids) and v != eos_id]
        total = first[bad_ids].sum()
        for chunk in range(0, len(good), 128):
            firsts = good[chunk : chunk + 128]
            logits = model(torch.tensor([[*prompt_ids, v] for v in firsts])).logits[:, -1].double()
            second = torch.log_softmax(logits, -1).exp()[:, bad_ids].sum(-1)
            total = total + (first[firsts] * second).sum()
    return float(total)


def exact_p_bad(lm_dir: Path, tokenizer) -> dict:
    """The LM's exact P(bad) for the default prompt: the project's estimator, cross-checked by brute force."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    prompt_ids = tokenizer(DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
    bad_ids = bad_token_ids(tokenizer, grammar.BAD_WORDS)
    brute = brute_force_p_bad(model, prompt_ids, bad_ids, tokenizer.eos_token_id)
    try:
        from repulse.estimation.exact import exact_bad_probability
    except ImportError:
        return {"exact_p_bad": brute, "exact_p_bad_method": "brute force (build script)"}
    result = exact_bad_probability(
        model,
        prompt_ids,
        RESPONSE_LEN,
        bad_words=list(grammar.BAD_WORDS),
        tokenizer=tokenizer,
        eos_token_id=tokenizer.eos_token_id,
    )
    p_bad = float(getattr(result, "p_bad", result))
    return {"exact_p_bad": p_bad, "exact_p_bad_method": "repulse.estimation.exact", "brute_force_p_bad": brute}


def build_models(work: Path, out: Path, tokenizer, corpus, rm_data, heldout_pairs, seed: int) -> dict:
    """Train the LM and the RM with the project's CLIs, copy them into `out`, calibrate the RM, measure both."""
    import torch
    import toy_properties

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    rm_pairs, calibration = rm_data
    lm_final = train_lm(work, tokenizer, corpus, seed)
    copy_model(lm_final, out / "tiny_lm", tokenizer)
    rm_final = train_rm(work, out / "tiny_lm", rm_pairs, seed)
    copy_model(rm_final, out / "tiny_rm", tokenizer)
    measured = {**exact_p_bad(out / "tiny_lm", tokenizer), **calibrate_rm(out / "tiny_rm", tokenizer, calibration)}
    measured.update(evaluate_rm(out / "tiny_rm", tokenizer, heldout_pairs))
    toy = toy_properties.measure(out, measured["rm_threshold"])
    return {
        "vocab_size": len(tokenizer),
        "lm_shape": LM_SHAPE,
        "lm_epochs": LM_EPOCHS,
        "rm_pairs": RM_PAIRS,
        "rm_epochs": RM_EPOCHS,
        **measured,
        "toy_properties": toy,
    }


def copy_model(final_dir: Path, dest: Path, tokenizer) -> None:
    """Copy a trained model folder and re-save our tokenizer over it, so its files match a --data-only build."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(final_dir, dest)
    tokenizer.save_pretrained(dest)


def write_metadata(out: Path, seed: int, start: float, extra: dict) -> None:
    files = {
        str(p.relative_to(out)): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "assets.json" and "__pycache__" not in p.parts and p.suffix != ".py"
    }
    metadata = {
        "seed": seed,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.time() - start, 1),
        "default_prompt": DEFAULT_PROMPT,
        "response_len": RESPONSE_LEN,
        "bad_words": list(grammar.BAD_WORDS),
        "corpus_size": CORPUS_SIZE,
        "planted_bad_rate": BAD_RATE,
        **extra,
        "files": files,
        "total_bytes": sum(files.values()),
    }
    (out / "assets.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
