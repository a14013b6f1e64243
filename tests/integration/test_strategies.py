"""DeepSpeed ZeRO and FSDP2 on two gloo processes give what one plain process gives at the same global batch (fp32:
losses per step and final weights within 1e-5), resume exactly, and export Hugging Face folders that plain
transformers reloads.

The model is a tiny Llama with tied input/output embeddings (FSDP2 must keep them in one group) and no biases:
GPT-2's attention key bias has an analytically zero gradient, which Adam turns into float-noise-sized updates
of either sign, so no tolerance would hold there. The learning rate decays linearly, so a schedule that is
not stepped, or stepped twice, changes the numbers.

The default run keeps one case per strategy (ZeRO-3 SFT resumed across the deepspeed launcher and torchrun,
FSDP2 SFT resumed, ZeRO-3 DPO with its reference sharded); the full matrix is marked slow.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from repulse.cli import train_dpo, train_sft
from tests.integration.helpers import load_weights
from tests.integration.launchers import launch

pytest.importorskip("deepspeed")

TOL = 1e-5
FLAGS = [
    "--micro_train_batch_size",
    "2",
    "--train_batch_size",
    "8",
    "--max_samples",
    "24",  # 3 optimizer steps: micro 2 x accumulation 4 on one process, 2 x 2 x 2 processes on two
    "--learning_rate",
    "1e-3",
    "--lr_scheduler",
    "linear",
    "--lr_warmup_ratio",
    "0",
    "--max_len",
    "16",
    "--seed",
    "3",
    "--disable_progress_bar",
]
DPO_FLAGS = ["--prompt_key", "prompt", "--chosen_key", "chosen", "--rejected_key", "rejected", "--beta", "0.1"]
ZERO = {stage: ["--strategy", "deepspeed", "--zero_stage", str(stage)] for stage in range(4)}
FSDP2 = ["--strategy", "fsdp2"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def sft_argv(llama_dir, sft_file, save, *extra) -> list[str]:
    return ["--pretrain", str(llama_dir), "--dataset", str(sft_file), *FLAGS, "--save_path", str(save), *extra]


def dpo_argv(llama_dir, pref_file, save, *extra) -> list[str]:
    return [*sft_argv(llama_dir, pref_file, save, *extra), *DPO_FLAGS]


@pytest.fixture(scope="module")
def one_sft(tmp_path_factory, llama_dir, sft_file) -> Path:
    """The reference: one plain process, accumulation 4."""
    save = tmp_path_factory.mktemp("one") / "sft"
    assert train_sft.main(sft_argv(llama_dir, sft_file, save)) == 0
    return save


@pytest.fixture(scope="module")
def one_dpo(tmp_path_factory, llama_dir, pref_file) -> Path:
    save = tmp_path_factory.mktemp("one") / "dpo"
    assert train_dpo.main(dpo_argv(llama_dir, pref_file, save)) == 0
    return save


def losses(save: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (save / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(reference: Path, other: Path, initial: Path) -> None:
    """Losses per step and final weights within TOL, and the weights really moved (so equality means something)."""
    assert losses(other) == pytest.approx(losses(reference), abs=TOL) and len(losses(reference)) >= 2
    ref, got, start = load_weights(reference / "final"), load_weights(other / "final"), load_weights(initial)
    assert sorted(got) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=TOL, msg=name)
    moved = [n for n in ref if n in start and "norm" not in n]  # a reward model adds its head
    assert moved and all((ref[n] - start[n]).abs().max() > 100 * TOL for n in moved)


def assert_reloads_with_equal_logits(reference: Path, other: Path) -> None:
    """final/ is a plain Hugging Face folder: transformers loads it, and its logits equal the reference's."""
    from transformers import AutoModelForCausalLM

    config = json.loads((other / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDP's class name
    assert "lm_head.weight" not in load_weights(other / "final")  # tied: saved once, as save_pretrained does
    ids = torch.tensor([[1, 5, 7, 9, 11, 4, 6]])
    logits = [AutoModelForCausalLM.from_pretrained(p / "final").eval()(ids).logits for p in (reference, other)]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=TOL)


def interrupted_then_resumed(argv: list[str], save: Path, first: str, second: str, stop_after: int = 2) -> str:
    """Stop a 2-process run after optimizer step `stop_after` (checkpoints every step), resume it; the resumed
    run's log."""
    stopped = launch(first, "tests.integration.interrupt", [str(stop_after), "repulse.cli.train_sft", *argv], ok=False)
    assert stopped.returncode != 0 and not (save / "final").exists(), stopped.stderr[-2000:]
    assert (save / "checkpoints").is_dir(), (stopped.stdout + stopped.stderr)[-3000:]
    assert sorted(p.name for p in (save / "checkpoints").iterdir()) == ["global_step1", "global_step2"]
    resumed = launch(second, "repulse.cli.train_sft", [*argv, "--load_checkpoint"])
    return resumed.stdout + resumed.stderr


def assert_resumed_at_step_2(log: str, save: Path) -> None:
    assert f"resumed from {save / 'checkpoints' / 'global_step2'} (step 2, epoch 1)" in log
    assert log.count("checkpoint saved:") == 1  # only step 3 ran (one line: rank 0)


def test_zero3_sft_resumed_equals_one_process(tmp_path, llama_dir, sft_file, one_sft):
    """Interrupted under the deepspeed launcher (the fork's way), resumed under torchrun."""
    save = tmp_path / "zero3"
    argv = sft_argv(llama_dir, sft_file, save, *ZERO[3], "--save_steps", "1")
    log = interrupted_then_resumed(argv, save, "deepspeed", "torchrun")
    assert "strategy: DeepSpeed ZeRO-3, rank 0 of 2" in log
    assert "weights, gradients and optimizer state sharded" in log
    assert_resumed_at_step_2(log, save)
    checkpoint = save / "checkpoints" / "global_step3"
    assert sorted(p.name for p in (checkpoint / "deepspeed").iterdir()) == [
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")
    ]
    assert not list(checkpoint.rglob("*.py"))  # DeepSpeed's conversion scripts are not kept: data only
    assert_same_run(one_sft, save, llama_dir)
    assert_reloads_with_equal_logits(one_sft, save)


def test_fsdp2_sft_resumed_equals_one_process(tmp_path, llama_dir, sft_file, one_sft):
    save = tmp_path / "fsdp2"
    argv = sft_argv(llama_dir, sft_file, save, *FSDP2, "--save_steps", "1")
    log = interrupted_then_resumed(argv, save, "torchrun", "torchrun")
    assert "strategy: FSDP2, rank 0 of 2" in log
    assert_resumed_at_step_2(log, save)
    assert (save / "checkpoints" / "global_step3" / "dcp" / ".metadata").is_file()
    assert_same_run(one_sft, save, llama_dir)
    assert_reloads_with_equal_logits(one_sft, save)


def test_zero3_dpo_equals_one_process(tmp_path, llama_dir, pref_file, one_dpo):
    """The reference model runs in DeepSpeed's ZeRO-3 inference config (sharded, gathered layer by layer)."""
    save = tmp_path / "dpo"
    done = launch("torchrun", "repulse.cli.train_dpo", dpo_argv(llama_dir, pref_file, save, *ZERO[3]))
    assert "frozen models sharded (ZeRO-3 inference)" in done.stderr
    assert_same_run(one_dpo, save, llama_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy", [ZERO[0], ZERO[1], ZERO[2], ZERO[3], FSDP2], ids=["z0", "z1", "z2", "z3", "fsdp2"]
)
@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_matrix_two_processes_equal_one(tmp_path, llama_dir, sft_file, pref_file, one_sft, one_dpo, strategy, command):
    save = tmp_path / "two"
    if command == "sft":
        launch("torchrun", "repulse.cli.train_sft", sft_argv(llama_dir, sft_file, save, *strategy))
        assert_same_run(one_sft, save, llama_dir)
    else:
        launch("torchrun", "repulse.cli.train_dpo", dpo_argv(llama_dir, pref_file, save, *strategy))
        assert_same_run(one_dpo, save, llama_dir)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stages_resume(tmp_path, llama_dir, sft_file, one_sft, stage):
    save = tmp_path / f"zero{stage}"
    argv = sft_argv(llama_dir, sft_file, save, *ZERO[stage], "--save_steps", "1")
    assert_resumed_at_step_2(interrupted_then_resumed(argv, save, "torchrun", "torchrun"), save)
    assert_same_run(one_sft, save, llama_dir)


@pytest.mark.slow
def test_fsdp2_checkpoint_of_two_processes_resumes_on_one(tmp_path, llama_dir, sft_file, one_sft):
    """DCP reshards on load: a checkpoint written by 2 ranks resumes in one process."""
    save = tmp_path / "fsdp2"
    argv = sft_argv(llama_dir, sft_file, save, *FSDP2, "--save_steps", "1")
    launch("torchrun", "tests.integration.interrupt", ["2", "repulse.cli.train_sft", *argv], ok=False)
    assert train_sft.main([*argv, "--load_checkpoint"]) == 0
    assert_same_run(one_sft, save, llama_dir)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_adam_offload_equals_torch_adamw(tmp_path, llama_dir, sft_file, one_sft, stage):
    """DeepSpeedCPUAdam (ZeRO-Offload; its C++ kernel is compiled on first use) against torch's AdamW."""
    save = tmp_path / "offload"
    done = launch(
        "torchrun", "repulse.cli.train_sft", sft_argv(llama_dir, sft_file, save, *ZERO[stage], "--adam_offload")
    )
    assert "Adam state and step on the CPU" in done.stderr
    assert_same_run(one_sft, save, llama_dir)


@pytest.mark.slow
def test_checkpoint_layout_must_match(tmp_path, llama_dir, sft_file, capsys):
    """A ZeRO-2 checkpoint cannot be resumed as ZeRO-3 or by plain torch: refused in one line."""
    save = tmp_path / "z2"
    launch("torchrun", "repulse.cli.train_sft", sft_argv(llama_dir, sft_file, save, *ZERO[2], "--save_steps", "1"))
    shutil.rmtree(save / "final")
    again = launch(
        "torchrun",
        "repulse.cli.train_sft",
        sft_argv(llama_dir, sft_file, save, *ZERO[3], "--load_checkpoint"),
        ok=False,
    )
    assert "holds state laid out as (kind deepspeed, world_size 2, zero_stage 2)" in again.stderr
    assert train_sft.main([*sft_argv(llama_dir, sft_file, save), "--load_checkpoint"]) == 2
    assert "this run is single process" in capsys.readouterr().err


def other_commands_argv(command, tmp_path, llama_dir, files, save):
    """(module, argv) of train_kto / train_kd / train_prm / train_rm on the tiny Llama, at the shared sizes with a
    global batch of 4 (their data sets are small): at least 2 optimizer steps each."""
    small = ["--train_batch_size", "4"]
    if command == "kd":
        from transformers import LlamaForCausalLM

        teacher = tmp_path / "teacher"
        if not teacher.exists():
            torch.manual_seed(11)
            LlamaForCausalLM(LlamaForCausalLM.config_class.from_pretrained(llama_dir)).save_pretrained(teacher)
        extra = ["--teacher_model", str(teacher), "--kd_coef", "0.5"]
        return "train_kd", sft_argv(llama_dir, files["sft"], save, *extra)
    if command == "kto":
        return "train_kto", sft_argv(llama_dir, files["unpaired"], save, "--beta", "0.5", *small)
    if command == "prm":
        return "train_prm", sft_argv(llama_dir, files["prm"], save, "--label_key", "value", *small)
    return "train_rm", [*sft_argv(llama_dir, files["pref"], save, *small), *DPO_FLAGS[:6]]  # the keys, no --beta


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [ZERO[3], FSDP2], ids=["z3", "fsdp2"])
@pytest.mark.parametrize("command", ["kto", "kd", "prm", "rm"])
def test_other_commands_two_processes_equal_one(
    tmp_path, llama_dir, sft_file, unpaired_file, prm_file, pref_file, strategy, command
):
    """train_kto, train_kd (teacher frozen: ZeRO-3 inference / FSDP2 shards), train_prm and train_rm."""
    import importlib

    files = {"sft": sft_file, "unpaired": unpaired_file, "prm": prm_file, "pref": pref_file}
    name, one = other_commands_argv(command, tmp_path, llama_dir, files, tmp_path / "one")
    assert importlib.import_module(f"repulse.cli.{name}").main(one) == 0
    _, two = other_commands_argv(command, tmp_path, llama_dir, files, tmp_path / "two")
    launch("torchrun", f"repulse.cli.{name}", [*two, *strategy])
    assert_same_run(tmp_path / "one", tmp_path / "two", llama_dir)


@pytest.mark.slow
def test_gradient_checkpointing_under_zero3_changes_no_number(tmp_path, llama_dir, sft_file, one_sft):
    save = tmp_path / "ckpt"
    launch(
        "torchrun", "repulse.cli.train_sft", sft_argv(llama_dir, sft_file, save, *ZERO[3], "--gradient_checkpointing")
    )
    assert_same_run(one_sft, save, llama_dir)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [ZERO[2], FSDP2], ids=["z2", "fsdp2"])
def test_bf16_trains(tmp_path, llama_dir, sft_file, strategy):
    """bf16 numbers differ from fp32 by design (DeepSpeed keeps fp32 master weights): it runs, learns, saves."""
    save = tmp_path / "bf16"
    launch("torchrun", "repulse.cli.train_sft", sft_argv(llama_dir, sft_file, save, *strategy, "--bf16"))
    values = losses(save)
    assert all(math.isfinite(v) for v in values) and values[-1] < values[0]
    assert load_weights(save / "final")["model.norm.weight"].dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
@pytest.mark.parametrize(("config", "command"), [("sft_tiny.yaml", "train_sft"), ("rm_tiny.yaml", "train_rm")])
def test_supervised_configs_run_under_both_launchers(tmp_path, launcher, config, command):
    """configs/ as shipped, on 2 processes: DeepSpeed with the fork's default ZeRO-2 under either launcher."""
    path = Path(__file__).resolve().parents[2] / "configs" / config
    done = launch(launcher, f"repulse.cli.{command}", ["--config", str(path), "--save_path", str(tmp_path / "run")])
    assert "strategy: DeepSpeed ZeRO-2, rank 0 of 2" in done.stdout + done.stderr
    assert (tmp_path / "run" / "final" / "config.json").is_file()
