"""Flags of serve_rm (the reward-model HTTP server). Names follow OpenRLHF's serve_rm where it has them.

serve_rm also takes the reward-model flags of RewardArgs, the loading flags of ModelArgs and --max_len of DataArgs.
"""

from __future__ import annotations

from dataclasses import dataclass

from repulse.config.common import BatchArgs
from repulse.config.fields import arg, require

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# The API key's environment variable, read by the server when --api_key is not given and by the client
# (--remote_rm_url has no key flag in the fork). A key on the command line is visible to local users in `ps`.
API_KEY_ENV = "REPULSE_RM_API_KEY"


@dataclass
class ServeArgs(BatchArgs):
    max_wait_ms: float = arg(5.0, "How long the first queued text waits for others to fill a batch (milliseconds).")
    disable_batching: bool = arg(False, "One request per model call, no merging (the benchmark's baseline).")
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
        super().__post_init__()
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

    def is_exposed(self) -> bool:
        """Bound to an address other machines may reach."""
        return self.host not in LOCAL_HOSTS
