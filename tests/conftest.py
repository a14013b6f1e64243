"""Shared fixtures. No hub access: every model here is built from a config or read from the embedded assets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

WORDS = ["this", "man", "woman", "is", "a", "the", "good", "kind", "nice", "tall", "jerk", "fool", "very", "so"]
SPECIAL = ["<pad>", "<eos>", "<unk>"]


def make_tokenizer():
    """A word-level tokenizer with GPT-2-style leading-space tokens ('Ġman'), so decode(concat) is natural text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in WORDS:
        vocab.setdefault("Ġ" + w, len(vocab))
        vocab.setdefault(w, len(vocab))
    vocab.setdefault(".", len(vocab))
    vocab.setdefault("Ġ.", len(vocab))
    for marker in ("+", "-"):  # process-reward labels (appended: earlier ids stay)
        vocab.setdefault(marker, len(vocab))
        vocab.setdefault("Ġ" + marker, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.add_tokens([AddedToken("ки", lstrip=True)])  # the process-reward step marker (not byte-level)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return tok


def make_gpt2(vocab_size: int, seed: int = 0, n_layer: int = 2, n_embd: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=2,
        vocab_size=vocab_size,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module (tiny models: more threads only add contention, up to 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random-init 2-layer GPT-2 + the word tokenizer, saved as a Hugging Face folder."""
    path = tmp_path_factory.mktemp("tiny_gpt2")
    make_gpt2(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory) -> Path:
    rows = [
        {"input": f"this {who} is", "output": f" {adv} {adj} ."}
        for who in ("man", "woman")
        for adv in ("very", "so", "a")
        for adj in ("good", "kind", "nice", "tall", "jerk", "fool")
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)


@pytest.fixture(scope="session")
def unpaired_file(tmp_path_factory) -> Path:
    rows = [
        {"input": f"this {who} is a", "output": f" {word} .", "label": word not in ("jerk", "fool")}
        for who in ("man", "woman")
        for word in ("good", "kind", "nice", "tall", "jerk", "fool")
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "unpaired.jsonl", rows)


@pytest.fixture(scope="session")
def prm_file(tmp_path_factory) -> Path:
    """Two-step texts: a step ending in a bad word is labelled '-', any other '+'."""
    rows = []
    for first in ("good", "jerk", "kind"):
        for second in ("nice", "fool", "tall"):
            text = f"this man is {first} ки so {second} ки"
            rows.append({"input": text, "value": ["-" if w in ("jerk", "fool") else "+" for w in (first, second)]})
    return write_jsonl(tmp_path_factory.mktemp("data") / "prm.jsonl", rows)


@pytest.fixture(scope="session")
def pref_file(tmp_path_factory) -> Path:
    rows = [
        {"prompt": f"this {who} is a", "chosen": f" {good} .", "rejected": f" {bad} ."}
        for who in ("man", "woman")
        for good in ("good", "kind", "nice", "tall")
        for bad in ("jerk", "fool")
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "pref.jsonl", rows)
