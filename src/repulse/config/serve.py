"""Flags of serve_rm (the reward-model HTTP server). Names follow OpenRLHF's serve_rm where it has them."""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.fields import arg, require

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# The API key's environment variable, read by the server when --api_key is not given and by the client
# (--remote_rm_url has no key flag in the fork). A key on the command line is visible to local users in `ps`.
API_KEY_ENV = "REPULSE_RM_API_KEY"


@dataclass
class ServeArgs:
    reward_pretrain: str | None = arg(
        None,
        "Reward model folder (a sequence-regression model in Hugging Face format) or hub name. Default: the tiny RM.",
    )
    value_head_prefix: str = arg("score", "Name of the reward head module in the model (HF uses 'score').")
    max_len: int = arg(
        2048,
        "Tokens per scored text (at most the model's positions); longer texts are cut at the end, as the reward "
        "model was trained.",
    )
    batch_size: int = arg(16, "Most texts in one model call; requests from many clients are merged up to this.")
    max_wait_ms: float = arg(5.0, "How long the first queued text waits for others to fill a batch (milliseconds).")
    disable_batching: bool = arg(False, "One request per model call, no merging (the benchmark's baseline).")
    normalize_reward: bool = arg(
        False,
        "Force (r - mean)/std with the mean/std stored in the model config (error if it has none). "
        "Without the flag the config decides (its normalize_reward key), as in training.",
    )
    bf16: bool = arg(False, "Load the reward model in bfloat16.")
    flash_attn: bool = arg(False, "Use FlashAttention-2 (needs a CUDA GPU and the flash-attn package).")
    load_in_4bit: bool = arg(False, "Load the weights in 4-bit NF4 (bitsandbytes, [gpu] extra).")
    device: str = arg("auto", "Where the model runs: auto (the GPU if there is one), cpu, cuda or cuda:N.")
    num_threads: int = arg(
        0,
        "CPU threads for the model (torch.set_num_threads); 0 keeps torch's default. On a CPU shared with other "
        "work, 1 avoids threads waiting on each other.",
    )
    host: str = arg("127.0.0.1", "Address to bind. Anything but a loopback address exposes the server: set --api_key.")
    port: int = arg(5000, "TCP port to listen on.")
    api_key: str | None = arg(
        None,
        "Require 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on every request but /health and the docs. "
        f"Prefer the {API_KEY_ENV} environment variable, read when this flag is not given (a key on the command "
        "line is visible to other local users).",
    )
    max_texts_per_request: int = arg(1024, "Most texts in one request (more: HTTP 413).")
    max_body_bytes: int = arg(16 * 1024 * 1024, "Largest request body in bytes (more: HTTP 413).")
    log_requests: bool = arg(False, "Log one line per request (texts, status, latency).")

    def __post_init__(self) -> None:
        require(self.max_len >= 2, f"--max_len must be >= 2, got {self.max_len}")
        require(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        require(0 <= self.max_wait_ms <= 10_000, f"--max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        require(self.num_threads >= 0, f"--num_threads must be >= 0, got {self.num_threads}")
        require(1 <= self.port <= 65535, f"--port must be in [1, 65535], got {self.port}")
        require(self.max_texts_per_request >= 1, "--max_texts_per_request must be >= 1")
        require(self.max_body_bytes >= 1024, f"--max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        require(self.api_key is None or self.api_key.strip() != "", "--api_key must not be empty")
        require(bool(self.value_head_prefix), "--value_head_prefix must not be empty")

    def is_exposed(self) -> bool:
        """Bound to an address other machines may reach."""
        return self.host not in LOCAL_HOSTS
