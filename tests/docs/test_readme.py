"""The README's walkthrough, run as written: its runnable shell blocks, in order, in one bash shell,
against a fresh `make run` server (real SQLite, real port, the real buf curl, jq and npm)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.test_cli import free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARKER = "<!-- runnable -->"
# What `make run` needs from the checkout; the TypeScript client is copied (npm ci rewrites its
# node_modules), the rest linked.
LINKED = (".venv", "Makefile", "pyproject.toml", "requirements", "data", "generated", "protos")
TYPESCRIPT_SOURCES = (
    *("src", "test", "examples"),
    *("package.json", "package-lock.json", "tsconfig.json"),
)
START_SECONDS = 90.0
WALKTHROUGH_SECONDS = 240.0


def runnable_blocks(markdown: str) -> list[str]:
    """Returns the ```sh blocks that directly follow a `<!-- runnable -->` line, in order."""
    blocks: list[str] = []
    lines = markdown.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if index + 1 >= len(lines) or lines[index + 1].strip() != "```sh":
            raise ValueError(f"README line {index + 1}: {MARKER} must precede a ```sh block")
        end = lines.index("```", index + 2)
        blocks.append("\n".join(lines[index + 2 : end]))
    return blocks


def test_runnable_blocks_are_found_in_order() -> None:
    markdown = (
        "a\n<!-- runnable -->\n```sh\necho 1\n```\n"
        "```sh\nskipped\n```\n"
        "<!-- runnable -->\n```sh\necho 2\necho 3\n```\n"
    )
    assert runnable_blocks(markdown) == ["echo 1", "echo 2\necho 3"]
    with pytest.raises(ValueError, match="must precede"):
        runnable_blocks("<!-- runnable -->\ntext\n")


@dataclass
class MakeRun:
    """`make run` in a scratch copy of the checkout, serving on free loopback ports."""

    workspace: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    if shutil.which("jq") is None or shutil.which("npm") is None:
        pytest.fail("the README walkthrough needs jq and npm (.ci/install-system-packages)")
    stale = subprocess.run(
        ["make", "-q", ".venv/.runtime-installed", ".venv/.installed"], cwd=REPO, check=False
    )
    if stale.returncode != 0:
        pytest.fail("the .venv is out of date: run `make venv` first (make test does)")
    workspace = tmp_path / "checkout"
    workspace.mkdir()
    for name in LINKED:
        (workspace / name).symlink_to(REPO / name)
    typescript = workspace / "clients" / "typescript"
    typescript.mkdir(parents=True)
    for name in TYPESCRIPT_SOURCES:
        source = REPO / "clients" / "typescript" / name
        if source.is_dir():
            shutil.copytree(source, typescript / name)
        else:
            shutil.copy2(source, typescript / name)

    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")}
    env.update(
        STOREFRONT_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        STOREFRONT_METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    log = tmp_path / "make-run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MakeRun(workspace, env, process, log)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _serving(env["STOREFRONT_GRPC_ADDRESS"]):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make run did not start serving:\n{server.output()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.timeout(START_SECONDS + WALKTHROUGH_SECONDS + 60)
def test_readme_walkthrough_runs_top_to_bottom(make_run: MakeRun) -> None:
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 8, "the README's walkthrough lost its runnable markers"
    # -x echoes each command, so a failure shows which README line it was.
    script = "set -euo pipefail -x\n" + "\n".join(blocks) + "\n"
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=make_run.workspace,
        env=make_run.env,
        capture_output=True,
        text=True,
        timeout=WALKTHROUGH_SECONDS,
        check=False,
    )
    transcript = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"the README walkthrough failed:\n{transcript}"
    # What the walkthrough promises its reader, beyond every command succeeding:
    assert '"status": "SERVING"' in result.stdout, transcript
    # The validation error names its fields in the message, and its details decode.
    assert '"message": "email: must be an email address' in result.stdout, transcript
    assert '{"fieldViolations":[{"field":"email"' in result.stdout, transcript
    assert "(expected)" in result.stdout, transcript
    assert ": PAID, " in result.stdout, transcript  # the TypeScript example's order
    assert '"state": "ORDER_STATE_PARTIALLY_REFUNDED"' in result.stdout, transcript
