"""serve_rm under load: requests/s and latency with dynamic batching on and off (`--disable_batching`).

For each mode a fresh `python -m repulse.cli.serve_rm` process serves the tiny reward model on 127.0.0.1 (the
embedded one when built, else a tiny GPT-2 RM made here); an asyncio + httpx client sends --n requests of one
text each (prompt + response) at each concurrency level, after a short warm-up. Reported per setting: requests/s
over the whole level, p50/p99 latency, errors (non-200 or transport failures), and the mean texts per model call
(from /health). The peer of batching is the same server with batching off; the ratio at each concurrency is the
headline. Client and server share the machine's cores, so on a small machine the client's own cost caps both.

    python benchmarks/serve_rm_load.py                          # N=2000 per level, concurrency 1, 16, 64
    python benchmarks/serve_rm_load.py --n 500 --n_c1 200 --out benchmarks/results/serve_rm_load_smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, format_table, machine_info, result_path, set_offline_env, write_json_atomic  # noqa: E402

WORDS = [
    "this",
    "man",
    "woman",
    "person",
    "is",
    "a",
    "an",
    "the",
    "very",
    "so",
    "quite",
    "good",
    "kind",
    "nice",
    "tall",
    "fool",
    "jerk",
    "clever",
    "calm",
    "loud",
]
STARTUP_TIMEOUT_S = 120
WARMUP_REQUESTS = 64


# ---------------------------------------------------------------------------------------------------------- model
def build_tiny_rm(out: Path, seed: int = 0) -> Path:
    """A random-init 2-layer GPT-2 sequence-regression model + a word-level tokenizer (scores are meaningless)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForSequenceClassification, GPT2Config, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<|endoftext|>", "<unk>", "."])}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=len(vocab),
        n_positions=128,
        num_labels=1,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pick_model(model: str, work: Path) -> tuple[Path, str]:
    if model == "smollm2":
        from common import smollm2_dir

        return smollm2_dir(), "SmolLM2-135M-Instruct (new score head)"
    from repulse.assets import TINY_RM_DIR

    if (TINY_RM_DIR / "config.json").exists():
        return TINY_RM_DIR, "embedded tiny_rm"
    return build_tiny_rm(work / "tiny_rm"), "tiny GPT-2 RM built by the benchmark (embedded one not built yet)"


def make_requests(n: int, seed: int) -> list[dict[str, list[str]]]:
    """Requests as OpenRLHF clients send them: the full text in `query`, its prompt beside it."""
    rng = random.Random(seed)
    prompt = "this man is a"
    return [
        {"prompts": [prompt], "query": [prompt + " " + " ".join(rng.choices(WORDS, k=rng.randint(2, 12))) + " ."]}
        for _ in range(n)
    ]


# --------------------------------------------------------------------------------------------------------- server
def start_server(model_dir: Path, port: int, args, batching: bool, log_path: Path) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "repulse.cli.serve_rm",
        "--reward_pretrain",
        str(model_dir),
        "--port",
        str(port),
        "--batch_size",
        str(args.batch_size),
        "--max_wait_ms",
        str(args.max_wait_ms),
        "--max_texts_per_request",
        "64",
        "--num_threads",
        str(args.num_threads),
    ]
    if not batching:
        argv.append("--disable_batching")
    log = open(log_path, "w")  # noqa: SIM115  (the server's lifetime, closed by the OS when it exits)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=set_offline_env(), cwd=REPO_ROOT)


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve_rm exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2.0).json()
        except httpx.TransportError:
            time.sleep(0.25)
    raise RuntimeError(f"serve_rm not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------------- client
class HttpxConnection:
    """One httpx.AsyncClient with one keep-alive connection per worker: a single pool shared by 64 workers spends
    its time in httpcore's pool bookkeeping, and the benchmark would measure that instead of the server."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s)

    async def post(self, body: dict) -> tuple[int, bytes]:
        response = await self.client.post("/get_reward", json=body)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (~0.1 ms of client CPU per request, against
    ~2-6 ms for httpx here), so that on a small machine the load generator does not starve the server."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.timeout_s = timeout_s
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: dict) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, int(self.port))
        reader, writer = self.streams
        data = json.dumps(body).encode()
        head = f"POST /get_reward HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        try:
            async with asyncio.timeout(self.timeout_s):
                lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
                payload = await reader.readexactly(int(headers["content-length"]))
        except BaseException:
            await self.close()  # the connection's state is unknown: the next request opens a new one
            raise
        if headers.get("connection", "").strip() == "close":
            await self.close()
        return int(lines[0].split()[1]), payload

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


CLIENTS = {"raw": RawConnection, "httpx": HttpxConnection}


async def load_level(url: str, bodies: list[dict], concurrency: int, args, client: str) -> dict[str, Any]:
    """`concurrency` workers, one connection each, send the bodies in order, each waiting for its answer."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0

    async def worker(conn) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            body, next_index = bodies[next_index], next_index + 1
            start = time.perf_counter()
            try:
                status, payload = await conn.post(body)
                if status != 200 or len(json.loads(payload)["rewards"]) != len(body["query"]):
                    errors.append(f"HTTP {status}: {payload[:120]!r}")
            except (OSError, TimeoutError, ValueError, KeyError, asyncio.IncompleteReadError, httpx.HTTPError) as err:
                errors.append(f"{type(err).__name__}: {err}")
            latencies.append(time.perf_counter() - start)

    conns = [CLIENTS[client](url, args.timeout_s) for _ in range(concurrency)]
    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in conns))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": len(bodies),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(len(bodies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * cuts[98], 2),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }


def measure(url: str, proc: subprocess.Popen, args, concurrency: int, client: str) -> dict[str, Any]:
    """One level: the load, then the server's model calls and both sides' CPU time spent on it."""
    import httpx

    n = args.n_c1 if concurrency == 1 else args.n
    calls_before = httpx.get(f"{url}/health").json()["model_calls"]
    cpu_before = (cpu_seconds(proc.pid), time.process_time())
    row = asyncio.run(load_level(url, make_requests(n, seed=concurrency), concurrency, args, client))
    server_cpu, client_cpu = cpu_seconds(proc.pid) - cpu_before[0], time.process_time() - cpu_before[1]
    calls = httpx.get(f"{url}/health").json()["model_calls"] - calls_before
    row.update(client=client, concurrency=concurrency, model_calls=calls, texts_per_call=round(n / max(calls, 1), 2))
    row["server_cpu_ms_per_request"] = round(1000 * server_cpu / n, 3)
    row["client_cpu_ms_per_request"] = round(1000 * client_cpu / n, 3)
    return row


MODES = ("batching", "no batching")


def start_servers(model_dir: Path, args, work: Path) -> dict[str, dict[str, Any]]:
    """Both servers up at once, so that each level runs on both back to back (a busy machine drifts)."""
    servers = {}
    for mode in MODES:
        port, log_path = free_port(), work / f"serve_rm_{mode.replace(' ', '_')}.log"
        proc = start_server(model_dir, port, args, mode == "batching", log_path)
        servers[mode] = {"proc": proc, "url": f"http://127.0.0.1:{port}", "log": log_path}
    for server in servers.values():
        server["health"] = wait_healthy(server["url"], server["proc"], server["log"])
        asyncio.run(load_level(server["url"], make_requests(WARMUP_REQUESTS, seed=1), 8, args, "raw"))
    return servers


def run_levels(servers: dict[str, dict[str, Any]], args) -> list[dict[str, Any]]:
    """Every (client, concurrency) level on both servers, the order of the two alternating between repeats."""
    rows = []
    for repeat in range(args.repeats):
        for client in args.clients:
            for concurrency in args.concurrency:
                for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                    server = servers[mode]
                    row = measure(server["url"], server["proc"], args, concurrency, client)
                    rows.append({"mode": mode, "repeat": repeat, **row})
                    rps = row["requests_per_s"]
                    print(f"  #{repeat} {mode:<12} {client:<6} c={concurrency:<3} {rps:>8.1f} req/s", flush=True)
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: the median over repeats of each figure; errors summed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["client"], row["concurrency"]), []).append(row)
    keys = (
        "requests_per_s",
        "p50_ms",
        "p99_ms",
        "texts_per_call",
        "server_cpu_ms_per_request",
        "client_cpu_ms_per_request",
    )
    out = []
    for (mode, client, concurrency), group in groups.items():
        merged = {k: round(statistics.median(r[k] for r in group), 3) for k in keys}
        merged.update(mode=mode, client=client, concurrency=concurrency, requests=sum(r["requests"] for r in group))
        merged.update(errors=sum(r["errors"] for r in group), repeats=len(group))
        out.append(merged)
    return sorted(out, key=lambda r: (r["client"] != "raw", r["client"], r["concurrency"], r["mode"]))


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="Requests per concurrency level (one text each).")
    parser.add_argument("--n_c1", type=int, default=500, help="Requests at concurrency 1 (slow: fewer).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of every level; the table shows medians.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--clients", nargs="+", choices=sorted(CLIENTS), default=["raw", "httpx"], help="Load generators to run."
    )
    parser.add_argument("--batch_size", type=int, default=64, help="Server --batch_size when batching.")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="Server --max_wait_ms when batching.")
    parser.add_argument("--num_threads", type=int, default=1, help="Server --num_threads (0: torch's default).")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--timeout_s", type=float, default=60.0, help="Per-request client timeout.")
    parser.add_argument("--out", default=str(result_path("serve_rm_load")))
    args = parser.parse_args(argv)
    return args


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """requests/s with batching over requests/s without, per load generator and concurrency."""
    by = {(r["mode"], r["client"], r["concurrency"]): r["requests_per_s"] for r in rows}
    ratios = {
        f"{client} c={c}": round(rps / by[("no batching", client, c)], 2)
        for (mode, client, c), rps in by.items()
        if mode == "batching" and ("no batching", client, c) in by
    }
    return {"throughput_ratio_batching_over_no_batching": ratios, "total_errors": sum(r["errors"] for r in rows)}


def settings_of(args, model_name: str, servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model_name,
        "device": servers["batching"]["health"]["device"],
        "requests_per_level": args.n,
        "requests_at_concurrency_1": args.n_c1,
        "why_fewer_at_concurrency_1": "one request at a time is slow; fewer keep the whole run near 5 minutes",
        "texts_per_request": 1,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "server": {
            "batch_size": args.batch_size,
            "max_wait_ms": args.max_wait_ms,
            "num_threads": args.num_threads,
            "host": "127.0.0.1",
            "no_batching": "--disable_batching: one request per model call",
        },
        "warmup_requests_per_server": WARMUP_REQUESTS,
        "clients": {
            "raw": "asyncio streams, hand-written HTTP/1.1 keep-alive, one connection per concurrent worker",
            "httpx": "httpx.AsyncClient with one keep-alive connection per concurrent worker",
        },
        "method": "both servers run side by side; each level runs on one then the other (order alternating "
        "between repeats); the table holds medians over repeats; client and server share the machine's cores",
    }


COLUMNS = [
    ("mode", "mode", ""),
    ("client", "client", ""),
    ("concurrency", "conc", "d"),
    ("requests_per_s", "req/s", ".1f"),
    ("p50_ms", "p50 ms", ".1f"),
    ("p99_ms", "p99 ms", ".1f"),
    ("errors", "errors", "d"),
    ("texts_per_call", "texts/call", ".1f"),
    ("server_cpu_ms_per_request", "server cpu ms/req", ".2f"),
    ("client_cpu_ms_per_request", "client cpu ms/req", ".2f"),
]


def main(argv=None) -> int:
    args = parse_args(argv)
    set_offline_env()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve_rm_load_") as tmp:
        model_dir, model_name = pick_model(args.model, Path(tmp))
        print(f"serve_rm_load: {model_name}; N={args.n} (concurrency 1: {args.n_c1}); clients {args.clients}")
        servers = start_servers(model_dir, args, Path(tmp))
        try:
            runs = run_levels(servers, args)
        finally:
            exit_codes = {mode: stop_server(server["proc"]) for mode, server in servers.items()}
    table = aggregate(runs)
    print(format_table(table, COLUMNS))
    summary = summarize(table)
    summary["server_exit_codes_after_sigterm"] = exit_codes
    print(f"batching / no batching requests/s: {summary['throughput_ratio_batching_over_no_batching']}")
    payload = {
        "benchmark": "serve_rm_load",
        "machine": machine_info(("torch", "transformers", "fastapi", "uvicorn", "httpx")),
        "settings": settings_of(args, model_name, servers),
        "results": table,
        "runs": runs,
        "summary": summary,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    print(f"wrote {write_json_atomic(args.out, payload)}  ({payload['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
