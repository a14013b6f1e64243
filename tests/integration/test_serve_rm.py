"""serve_rm as a real uvicorn process on 127.0.0.1: concurrent clients, the client class, a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from repulse.infra.errors import UserError
from tests.integration.helpers import free_port
from tests.unit.serving.reference import reference_rewards
from tests.unit.serving.rm_fixture import build_tiny_rm

httpx = pytest.importorskip("httpx", reason="the server test needs the [serve] extra")
pytest.importorskip("uvicorn", reason="the server test needs the [serve] extra")

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WORDS = ["this", "man", "woman", "is", "a", "good", "kind", "jerk", "very", "so", "."]
STARTUP_TIMEOUT_S = 30


def start_server(rm_dir, port: int, log_file) -> subprocess.Popen:
    # --device auto: the GPU where there is one (the references run on CPU, hence 1e-4 tolerances).
    # A long batching window (2 s) with small batches: full batches go at once, and a few requests sent
    # together stay queued long enough to be in flight when SIGTERM arrives.
    argv = [
        "--reward_pretrain",
        str(rm_dir),
        "--port",
        str(port),
        "--batch_size",
        "8",
        "--max_wait_ms",
        "2000",
        "--max_len",
        "32",
    ]
    # The key from the environment, not the command line (where other local users would see it in `ps`).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env["REPULSE_RM_API_KEY"] = KEY
    return subprocess.Popen(
        [sys.executable, "-m", "repulse.cli.serve_rm", *argv], stdout=log_file, stderr=subprocess.STDOUT, env=env
    )


def wait_healthy(url: str, proc: subprocess.Popen, log_path) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve_rm exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=1.0).json()
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"serve_rm not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def texts_for(i: int) -> tuple[list[str], list[str]]:
    """(full texts, prompts): what an OpenRLHF client sends as `query` and `prompts`."""
    n = 1 + i % 3
    responses = [" " + " ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(3)) for j in range(n)]
    return ["this man is" + r for r in responses], ["this man is"] * n


def post(url: str, i: int) -> tuple[int, list[float] | str]:
    queries, prompts = texts_for(i)
    response = httpx.post(f"{url}/get_reward", json={"query": queries, "prompts": prompts}, headers=AUTH, timeout=30)
    return response.status_code, response.json()["rewards"] if response.status_code == 200 else response.text


def wait_for_queue(url: str, depth: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=1.0).json()["queue_depth"] >= depth:
            return
        time.sleep(0.02)
    pytest.fail(f"{depth} texts never queued together")


def test_real_server_serves_concurrent_clients_and_stops_gracefully(tmp_path):
    from repulse.models.load import load_tokenizer
    from repulse.models.reward import load_reward_model
    from repulse.serving.client import RemoteRewardModel

    rm_dir = build_tiny_rm(tmp_path / "rm")
    model, tokenizer = load_reward_model(str(rm_dir), _model_args()), load_tokenizer(str(rm_dir))
    port, log_path = free_port(), tmp_path / "serve_rm.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log_file:
        proc = start_server(rm_dir, port, log_file)
        try:
            health = wait_healthy(url, proc, log_path)
            assert health["device"] in ("cpu", "cuda") and health["batching"] is True

            with ThreadPoolExecutor(20) as pool:  # 20 clients at once
                answers = list(pool.map(lambda i: post(url, i), range(20)))
            for i, (status, rewards) in enumerate(answers):
                assert status == 200, rewards
                want = reference_rewards(model, tokenizer, texts_for(i)[0], max_len=32)
                torch.testing.assert_close(torch.tensor(rewards), want, atol=1e-4, rtol=1e-4)
            assert httpx.get(f"{url}/health").json()["model_calls"] < 20

            queries = [f" {w} ." for w in WORDS[:8]]  # a full batch: no waiting for the window
            with RemoteRewardModel(url, api_key=KEY, timeout=30) as remote:
                got = remote(queries, prompts=["this man is a"] * 8)  # responses + prompts, as --remote_rm_url
            want = reference_rewards(model, tokenizer, ["this man is a" + q for q in queries], max_len=32)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            with pytest.raises(UserError, match="HTTP 401: wrong API key"), RemoteRewardModel(url, api_key="x") as bad:
                bad(queries)

            # SIGTERM while 5 requests wait in the batcher: all are answered, then the process exits 0.
            one_text = [3 * k for k in range(5)]  # 5 texts < --batch_size 8: they wait out the window
            with ThreadPoolExecutor(5) as pool:
                pending = [pool.submit(post, url, i) for i in one_text]
                wait_for_queue(url, sum(len(texts_for(i)[0]) for i in one_text))
                proc.send_signal(signal.SIGTERM)
                late = [f.result(timeout=30) for f in pending]
            assert [status for status, _ in late] == [200] * 5
            assert proc.wait(timeout=10) == 0, log_path.read_text()[-3000:]
            assert "API key required" in log_path.read_text() and KEY not in log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with pytest.raises(UserError, match="failed after 2 attempts.*is `repulse serve_rm` running"):
        RemoteRewardModel(url, retries=1, backoff_s=0.0)(["a"])


def _model_args():
    from repulse.config.common import ModelArgs

    return ModelArgs()
