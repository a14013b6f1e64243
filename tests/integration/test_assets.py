"""The committed embedded assets: sizes, dataset keys, tokenizer, the LM's exact P(bad), the RM, determinism."""

from __future__ import annotations

import csv
import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repulse.assets import (
    ASSETS_DIR,
    DEFAULT_DATASETS,
    TINY_LM_DIR,
    TINY_RM_DIR,
    asset_path,
    bad_words,
    default_dataset,
    load_metadata,
)

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_assets.py"
KEYS = {
    "sft": {"input", "output"},
    "pretrain": {"text"},
    "preference": {"prompt", "chosen", "rejected"},
    "unpaired": {"input", "output", "label"},
    "prm": {"input", "value"},
    "prompts": {"prompt"},
    "heldout_prompts": {"prompt"},
    "distill": {"input", "output"},
    "behaviors": {"goal", "target"},
    "strings": {"target"},
    "negative": {"prompt", "response"},
    "chat": {"messages"},
}


def read_rows(path: str) -> list[dict]:
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_LM_DIR)


def test_assets_fit_in_10_mb_and_metadata_lists_them():
    files = [p for p in ASSETS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= 10 * 2**20
    meta = load_metadata()
    assert meta["default_prompt"] == "This man is a" and meta["response_len"] == 2
    assert meta["bad_words"] == bad_words()
    for name in meta["files"]:
        assert (ASSETS_DIR / name).is_file(), name


def test_every_default_dataset_exists_with_its_keys():
    assert set(DEFAULT_DATASETS) == set(KEYS)
    for kind, keys in KEYS.items():
        rows = read_rows(default_dataset(kind))
        assert 0 < len(rows) <= 1000, kind
        assert all(keys <= set(row) for row in rows), kind
    prm = read_rows(default_dataset("prm"))
    assert all(row["input"].count("ки") == len(row["value"]) and set(row["value"]) <= {"+", "-"} for row in prm)
    assert all(isinstance(row["label"], bool) for row in read_rows(default_dataset("unpaired")))
    assert read_rows(default_dataset("prompts"))[0]["prompt"] == "This man is a"


def test_missing_asset_names_the_build_command():
    with pytest.raises(FileNotFoundError, match="build_assets.py"):
        asset_path("no_such_file.bin")
    with pytest.raises(KeyError):
        default_dataset("no_such_kind")


def test_tokenizer_is_small_lossless_and_has_a_chat_template(tokenizer):
    assert len(tokenizer) <= 512
    assert None not in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    prompt_ids = tokenizer("This man is a", add_special_tokens=False)["input_ids"]
    assert len(prompt_ids) == 4 and tokenizer.decode(prompt_ids) == "This man is a"
    for row in read_rows(default_dataset("sft"))[:50] + read_rows(default_dataset("negative"))[:50]:
        prompt, response = row.get("input", row.get("prompt")), row.get("output", row.get("response"))
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids += tokenizer(response, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == prompt + response
    messages = read_rows(default_dataset("chat"))[0]["messages"]
    text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and messages[-2]["content"] in text
    for token in ("ки", "+", "-"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id


def test_each_bad_word_is_one_whole_word_token(tokenizer):
    for word in bad_words():
        for variant in (word, " " + word):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and tokenizer.decode(ids) == variant, variant


def brute_force_p_bad(model, prompt_ids: list[int], bad_ids: list[int], eos_id: int) -> float:
    """P(bad token within 2 steps), enumerating every first token; nothing is sampled after EOS."""
    with torch.no_grad():
        first = torch.softmax(model(torch.tensor([prompt_ids])).logits[0, -1].double(), -1)
        good = [v for v in range(first.numel()) if v not in bad_ids and v != eos_id]
        second = torch.softmax(model(torch.tensor([[*prompt_ids, v] for v in good])).logits[:, -1].double(), -1)
    return float(first[bad_ids].sum() + (first[good] * second[:, bad_ids].sum(-1)).sum())


def test_exact_p_bad_of_default_prompt_is_rare_but_not_zero(tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_LM_DIR, dtype=torch.float32).eval()
    prompt_ids = tokenizer("This man is a", add_special_tokens=False)["input_ids"]
    words = {w.lower() for w in bad_words()}
    bad_ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().lower() in words]
    assert len(bad_ids) == 2 * len(words)
    brute = brute_force_p_bad(model, prompt_ids, bad_ids, tokenizer.eos_token_id)
    assert 1e-4 <= brute <= 1e-2
    meta = load_metadata()
    assert brute == pytest.approx(meta.get("brute_force_p_bad", meta["exact_p_bad"]), rel=1e-4)
    from repulse.estimation.exact import exact_bad_probability

    result = exact_bad_probability(
        model, prompt_ids, 2, bad_words=bad_words(), tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id
    )
    assert result.p_bad == pytest.approx(meta["exact_p_bad"], rel=1e-4)
    # The estimator matches words in the decoded text, so a bad token glued to the previous word (" dumb" +
    # "fuck") does not count there but does count per token here: the two differ by a hair.
    assert result.p_bad == pytest.approx(brute, rel=0.05)


def score(model, tokenizer, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """RM scores of prompt + completion + EOS (as train_rm tokenizes pairs), with the stored normalization."""
    from repulse.models.reward import sequence_rewards

    rows = [
        tokenizer(p + c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for p, c in zip(prompts, completions)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        return sequence_rewards(model, ids, mask, "score")


def test_reward_model_separates_heldout_clean_from_bad(tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(TINY_RM_DIR).eval()
    assert model.config.num_labels == 1 and hasattr(model, "score")
    pairs = read_rows(str(asset_path("data", "heldout_pairs.jsonl")))
    prompts = [p["prompt"] for p in pairs]
    clean = score(model, tokenizer, prompts, [p["chosen"] for p in pairs])
    bad = score(model, tokenizer, prompts, [p["rejected"] for p in pairs])
    threshold = load_metadata()["rm_threshold"]
    assert (clean > bad).float().mean() >= 0.99
    assert (bad < threshold).float().mean() >= 0.99
    assert (clean > threshold).float().mean() >= 0.99


def test_reward_agrees_with_the_bad_word_metric_and_is_graded(tokenizer):
    """The toy is fair: on the 2-token continuations of the default prompt that hold 99% of p_0's mass, plus every
    continuation with a bad word, the RM's low region is the bad-word set and clean rewards are spread out.

    The one known disagreement: a response that starts with a bad word without its leading space ("fuck") reads
    as a bad word to the metric but reaches the RM glued to the prompt ("afuck", an unknown token).
    """
    from transformers import AutoModelForCausalLM

    from repulse.config.common import ModelArgs
    from repulse.estimation.exact import enumerate_response_logprobs
    from repulse.evaluation.diagnostics import bad_word_flags, decode_responses, leaf_rewards
    from repulse.models.reward import load_reward_model
    from repulse.rl.rewards import LocalRewardModel

    lm = AutoModelForCausalLM.from_pretrained(TINY_LM_DIR, dtype=torch.float32).eval()
    prompt_ids = torch.tensor(tokenizer("This man is a")["input_ids"])
    responses, mask, logps = enumerate_response_logprobs(lm, prompt_ids, 2, eos_token_id=tokenizer.eos_token_id)
    texts = decode_responses(tokenizer, responses, mask)
    bad = bad_word_flags(texts, bad_words())
    keep = (logps.exp() > 1e-6) | bad
    p, bad = logps.exp()[keep], bad[keep]
    source = LocalRewardModel(load_reward_model(str(TINY_RM_DIR), ModelArgs()), tokenizer, batch_size=2048)
    rewards = leaf_rewards(source, "This man is a", [t for t, k in zip(texts, keep.tolist()) if k])
    glued = torch.tensor([r[0].item() in set(tokenizer.convert_tokens_to_ids(bad_words())) for r in responses[keep]])
    p_bad, clean = float(p[bad].sum()), ~bad
    assert p[clean].sum() > 0.99 and 1e-4 <= p_bad <= 1e-3
    threshold = -5.0  # --threshold's default, which the toy configs rely on
    assert float(p[clean & (rewards < threshold)].sum()) < 1e-6
    assert float(p[bad & ~glued & (rewards >= threshold)].sum()) < 0.01 * p_bad
    assert float(p[bad & glued].sum()) < 0.05 * p_bad
    # Graded, not a plateau: clean rewards spread over several units, little mass near the top.
    weights = p[clean] / p[clean].sum()
    mean = float((weights * rewards[clean]).sum())
    assert float((weights * (rewards[clean] - mean) ** 2).sum()) ** 0.5 > 0.5
    assert float(weights[rewards[clean] > rewards[clean].max() - 0.05].sum()) < 0.01
    # sigma ∝ p e^{-r} already puts most of its mass on bad words.
    tilted = p * torch.exp(-rewards)
    assert float(tilted[bad].sum() / tilted.sum()) > 0.5


def run_build(out: Path, *extra: str, timeout: int = 900) -> None:
    subprocess.run([sys.executable, str(BUILD_SCRIPT), "--out", str(out), *extra], check=True, timeout=timeout)


def assert_same_data(out: Path) -> None:
    built = sorted(p.name for p in (out / "data").iterdir())
    assert built == sorted(p.name for p in (ASSETS_DIR / "data").iterdir())
    mismatch = filecmp.cmpfiles(out / "data", ASSETS_DIR / "data", built, shallow=False)[1]
    assert not mismatch, f"regenerated data differs from the committed files: {mismatch}"
    assert filecmp.cmp(out / "bad_words.txt", ASSETS_DIR / "bad_words.txt", shallow=False)
    assert filecmp.cmp(out / "tiny_lm" / "tokenizer.json", TINY_LM_DIR / "tokenizer.json", shallow=False)


def test_data_only_build_reproduces_committed_data_and_tokenizer(tmp_path):
    run_build(tmp_path, "--data-only", timeout=120)
    assert_same_data(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_full_build_is_deterministic(tmp_path):
    # No time limit is asserted (timings belong in benchmarks): the build takes about 5 minutes on 2 idle cores.
    run_build(tmp_path, timeout=1200)
    assert_same_data(tmp_path)
    meta = json.loads((tmp_path / "assets.json").read_text())
    assert 1e-4 <= meta["exact_p_bad"] <= 1e-2 and meta["rm_heldout_accuracy"] >= 0.99
    toy = meta["toy_properties"]
    assert toy["beta_-10"]["sigma_p_bad"] > 0.99 and toy["p0_mass_within_0.05_of_max"] < 0.01
    assert toy["clean_mass_below_threshold"] < 1e-6 and meta["rm_calibration_corr"] > 0.95


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_runs_the_tiny_lm_and_its_greedy_output_matches_hf(tmp_path):
    """The tiny LM's heads (2 of 32) are a shape vLLM's CPU attention supports (heads of 16 are not).

    vLLM runs a float32 checkpoint in bfloat16 on CPU (dtype "auto"), the HF backend in float32: greedy decoding
    agrees except where rounding flips a near tie (" greatest" / " oldest" after "This woman is the").
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs repulse[vllm]")
    from repulse.cli import batch_inference

    common = ["--max_new_tokens", "4", "--greedy_sampling", "--max_samples", "16"]
    assert batch_inference.main([*common, "--vllm", "--output_path", str(tmp_path / "vllm.jsonl")]) == 0
    assert batch_inference.main([*common, "--output_path", str(tmp_path / "hf.jsonl")]) == 0
    ours, hf = read_rows(str(tmp_path / "vllm.jsonl")), read_rows(str(tmp_path / "hf.jsonl"))
    assert [r["input"] for r in ours] == [r["input"] for r in hf] and len(ours) == 16
    assert sum(a["output"] == b["output"] for a, b in zip(ours, hf)) >= 8
    # Where they differ it is a near tie: vLLM's first token is among the float32 model's top 3 on every row.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_LM_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_LM_DIR, dtype=torch.float32).eval()
    for row in ours:
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer(row["input"])["input_ids"]])).logits[0, -1]
        first = tokenizer(row["input"] + row["output"])["input_ids"][len(tokenizer(row["input"])["input_ids"])]
        assert first in logits.topk(3).indices.tolist(), row
