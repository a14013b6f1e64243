"""Every command and Python snippet of README.md runs, in README order, in one scratch folder, so the README cannot
drift from the code. Training commands must train visibly: the saved weights differ from the ones they started
from, and no warning says that no step had a non-zero learning rate.

Commands are parsed from the ```bash and ```python blocks of README.md. Each runs at small sizes: the flags in
SMALL are appended (the last value of a flag wins), and nothing else about the command changes. A command that
a test cannot or should not run here is marked in MARKS by a piece of its text:
- "slow": run only with `pytest -m slow` (torchrun and the deepspeed launcher, the real SmolLM2 model);
- "server": needs the serve_rm server, which test_server_commands starts from the README's own serve_rm line
  (then runs the README's requests against it);
- "never": installs packages or runs the suite itself (make, pip).
A new README command that needs another treatment gets a line in MARKS (or SMALL).

Commands that read the user's own files (path/to/model, data.jsonl, pairs.jsonl) get small stand-ins, made in
`workdir` from the embedded model and data. Later commands use the outputs of earlier ones (runs/sft/final ...),
so run the file as a whole.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_LEARNING = "no optimizer step of this run has a non-zero learning rate"

MARKS = {  # the first piece found in a command decides
    "make ": "never",
    ".venv/bin/": "never",
    "pip install": "never",
    "ray job submit": "never",
    "train_ppo_ray": "slow",
    "torchrun": "slow",
    "deepspeed --": "slow",
    "smollm2": "slow",
    "serve_rm": "server",
    "curl ": "server",
    "--remote_rm_url": "server",
}
TRAIN_SMALL = ["--max_samples", "64"]
SMALL = {
    "train_sft": TRAIN_SMALL,
    "train_rm": TRAIN_SMALL,
    "train_dpo": TRAIN_SMALL,
    "train_kto": TRAIN_SMALL,
    "train_kd": TRAIN_SMALL,
    "train_prm": TRAIN_SMALL,
    "train_ppo": ["--fit_steps", "1", "--harmlessness_training_num_episodes", "1"],
    "train_ppo_ray": ["--fit_steps", "1", "--harmlessness_training_num_episodes", "1"],
    "evaluate_gcg": ["--max_targets", "1", "--gcg_steps", "2", "--samples_per_prompt", "4"],
    "evaluate_beast": ["--max_targets", "1", "--beast_length", "2", "--samples_per_prompt", "4"],
    "estimate_rare_harmful_outputs": ["--n_samples", "256", "--batch_size", "128"],
    "forecast_rare_outputs": ["--evaluation_set_size", "24", "--top_k_fit", "6"],
    "batch_inference": ["--max_samples", "8", "--max_new_tokens", "8"],
}


@dataclass(frozen=True)
class Snippet:
    line: int  # README line where it starts
    language: str  # bash or python
    text: str  # a bash command (continuations joined, comment dropped) or a whole python block

    @property
    def mark(self) -> str:
        return next((mark for piece, mark in MARKS.items() if piece in self.text), "run")

    @property
    def id(self) -> str:
        words = self.text.split()
        return f"L{self.line}-{'-'.join(words[:2])}"[:60]


def readme_snippets() -> list[Snippet]:
    """The commands of the ```bash blocks and the ```python blocks of README.md, in order."""
    snippets: list[Snippet] = []
    lines = (ROOT / "README.md").read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(bash|python)\s*$", lines[i])
        i += 1
        if not fence:
            continue
        block: list[tuple[int, str]] = []
        while not lines[i].startswith("```"):
            block.append((i + 1, lines[i]))
            i += 1
        if fence.group(1) == "python":
            snippets.append(Snippet(block[0][0], "python", "\n".join(text for _, text in block)))
            continue
        start, pending = 0, ""
        for number, text in block:
            start = start or number
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            command = shlex.join(shlex.split(pending + text, comments=True))
            if command:
                snippets.append(Snippet(start, "bash", command))
            start, pending = 0, ""
    return snippets


SNIPPETS = readme_snippets()


def with_marks(snippets: list[Snippet], mark: str):
    return [pytest.param(s, id=s.id) for s in snippets if s.mark == mark]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder that looks like a checkout (configs/, src/) with the user's files the README names."""
    from repulse.assets import TINY_LM_DIR, default_dataset

    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(ROOT / "configs")
    (root / "src").symlink_to(ROOT / "src")
    shutil.copytree(TINY_LM_DIR, root / "path" / "to" / "model")
    sft = [json.loads(line) for line in Path(default_dataset("sft")).read_text().splitlines()]
    (root / "data.jsonl").write_text(
        "".join(json.dumps({"prompt": r["input"], "response": r["output"]}) + "\n" for r in sft[:96])
    )
    shutil.copy(default_dataset("preference"), root / "pairs.jsonl")
    return root


def run_command(command: str) -> int:
    """A `repulse ...` line in this process (stdin from a `printf ... |` prefix); returns its exit code."""
    from repulse.cli.__main__ import main

    stdin, words = None, shlex.split(command)
    if "|" in words:
        cut = words.index("|")
        assert words[0] == "printf", f"only printf pipes are supported: {command}"
        stdin = subprocess.run(words[:cut], capture_output=True, text=True, check=True).stdout
        words = words[cut + 1 :]
    assert words[0] == "repulse", f"not a repulse command: {command}"
    argv = [*words[1:], *SMALL.get(words[1], [])]
    if stdin is not None:
        import io

        old, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        if stdin is not None:
            sys.stdin = old


def started_from(words: list[str]) -> Path:
    """The weights a training command starts from: --pretrain, else the embedded tiny LM."""
    from repulse.assets import TINY_LM_DIR

    return Path(words[words.index("--pretrain") + 1]) if "--pretrain" in words else TINY_LM_DIR


def assert_trained(command: str, err: str) -> None:
    """A training command saved weights that differ from those it started from, and learned at some step."""
    import torch
    from safetensors.torch import load_file

    words = shlex.split(command)
    if not words[1].startswith("train_") or "--save_path" not in words:
        return
    assert NO_LEARNING not in err, f"{command}: {NO_LEARNING}"
    final = Path(words[words.index("--save_path") + 1]) / "final"
    if (final / "adapter_model.safetensors").exists():
        adapter = load_file(str(final / "adapter_model.safetensors"))
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), f"{command}: LoRA B is zero"
        return
    before = load_file(str(started_from(words) / "model.safetensors"))
    after = load_file(str(final / "model.safetensors"))
    shared = [k for k in before if k in after and before[k].shape == after[k].shape]
    assert shared and any(not torch.equal(before[k], after[k]) for k in shared), f"{command}: weights unchanged"


def run_snippet(snippet: Snippet, capsys) -> None:
    if snippet.language == "python":
        exec(compile(snippet.text, f"README.md:{snippet.line}", "exec"), {"__name__": "readme"})
        return
    code = run_command(snippet.text)
    err = capsys.readouterr().err
    assert code == 0, f"README.md:{snippet.line}: `{snippet.text}` exited {code}:\n{err[-3000:]}"
    assert_trained(snippet.text, err)


def test_readme_has_the_commands_it_should():
    from repulse.cli.__main__ import COMMANDS

    bash = [shlex.split(s.text) for s in SNIPPETS if s.language == "bash"]
    commands = {words[i + 1] for words in bash for i, word in enumerate(words[:-1]) if word == "repulse"}
    assert set(COMMANDS) - {"demo"} <= commands  # every command has an example (demo runs through `make demo`)
    assert all(s.mark in ("run", "slow", "server", "never") for s in SNIPPETS)


@pytest.mark.parametrize("snippet", with_marks(SNIPPETS, "run"))
def test_readme_command(snippet: Snippet, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    run_snippet(snippet, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", with_marks(SNIPPETS, "slow"))
def test_slow_readme_command(snippet: Snippet, workdir, monkeypatch, capsys):
    import os

    from tests.integration.helpers import free_port

    monkeypatch.chdir(workdir)
    words = [os.path.expanduser(w) for w in shlex.split(snippet.text)]
    if "smollm2" in snippet.text:
        from repulse.assets.smollm2 import smollm2_dir

        try:
            smollm2_dir()
        except Exception as err:  # not installed here: `make test-slow` installs it
            pytest.skip(f"SmolLM2 is not available: {err}")
    if words[0] in ("torchrun", "deepspeed"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        module = words[words.index("-m" if words[0] == "torchrun" else "--module") + 1]
        command = module.rsplit(".", 1)[-1]
        if words[0] == "torchrun":
            launcher = ["torch.distributed.run", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        else:
            launcher = ["deepspeed.launcher.runner", "--master_port", str(free_port())]
        cmd = [sys.executable, "-m", *launcher, *words[1:], *SMALL.get(command, [])]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    run_snippet(Snippet(snippet.line, "bash", shlex.join(words)), capsys)


@pytest.mark.parametrize("snippet", with_marks(SNIPPETS, "never"))
def test_setup_commands_are_not_run_here(snippet: Snippet):
    pytest.skip(f"README.md:{snippet.line} installs packages or runs the suite: {snippet.text}")


def wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read() if server.stderr else "serve_rm exited"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_server_commands(workdir, monkeypatch, capsys):
    """The README's serve_rm line, then every request and client line of that section against it."""
    pytest.importorskip("fastapi")
    from tests.integration.helpers import free_port

    monkeypatch.chdir(workdir)
    port = str(free_port())
    snippets = [s for s in SNIPPETS if s.mark == "server"]
    (serve,) = [s for s in snippets if s.text.startswith("repulse serve_rm")]
    argv = [w.replace("5000", port) for w in shlex.split(serve.text)[1:]]
    server = subprocess.Popen(
        [sys.executable, "-m", "repulse.cli", *argv], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server)
        for snippet in snippets:
            if snippet is serve:
                continue
            text = snippet.text.replace(":5000", f":{port}")
            if text.startswith("curl "):
                if shutil.which("curl") is None:
                    continue
                done = subprocess.run(shlex.split(text), capture_output=True, text=True, timeout=60)
                assert done.returncode == 0 and "rewards" in json.loads(done.stdout), done.stdout + done.stderr
            else:
                run_snippet(Snippet(snippet.line, "bash", text), capsys)
    finally:
        server.terminate()
        server.wait(timeout=30)
