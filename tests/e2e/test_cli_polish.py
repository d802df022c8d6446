"""The CLI's rough edges, each pinned: no traceback on a closed pipe, `config show` that `config check` reads
back, `emit --payload @FILE` and `-`, and no embedded PostgreSQL left running by a command that started it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.db import embedded_running
from tests.support import REPO

pytestmark = pytest.mark.db


def dispatcher(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], cwd=REPO, env=env, input=stdin, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose dispatcher uses an embedded database of its own in `tmp_path`, never started yet."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    return {**clean, "DISPATCHER_DATABASE__DATA_DIR": str(tmp_path / "data"), "DISPATCHER_LOG__FORMAT": "json"}


@pytest.mark.timeout(90)
def test_embedded_commands_leave_no_server_running_and_emit_reads_files(env: dict[str, str], tmp_path: Path) -> None:
    """`token create`, `emit --payload @FILE`, `emit --payload -` and `status` each start the embedded server
    and stop it again: afterwards nothing runs on the data directory. A missing payload file is a clear error."""
    data = env["DISPATCHER_DATABASE__DATA_DIR"]
    made = dispatcher("token", "create", "--organisation", "acme", "--role", "producer", env=env)
    assert made.returncode == 0, made.stderr
    assert not embedded_running(data)
    payload = tmp_path / "payload.json"
    payload.write_text('{"subject": "from a file"}')
    first = dispatcher("emit", "--organisation", "acme", "request.create", "--payload", f"@{payload}", env=env)
    second = dispatcher("emit", "--organisation", "acme", "request.create", "--payload", "-", env=env,
                        stdin='{"subject": "from stdin"}')  # fmt: skip
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.strip() != second.stdout.strip()
    missing = dispatcher("emit", "--organisation", "acme", "request.create", "--payload", "@/no/such/file", env=env)
    assert missing.returncode == 1 and "--payload @/no/such/file" in missing.stderr, missing.stderr
    status = dispatcher("status", env=env)
    assert status.returncode == 0 and "events not yet routed: 2" in status.stdout, status.stdout + status.stderr
    assert not embedded_running(data)


def test_status_into_a_closed_pipe_has_no_traceback(env: dict[str, str]) -> None:
    """`dispatcher status | head -1` prints one line and no BrokenPipeError."""
    pipeline = subprocess.run(
        f"{sys.executable} -m dispatcher status | head -1", shell=True, cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert pipeline.stdout == "deliveries by state:\n"
    assert "Traceback" not in pipeline.stderr and "BrokenPipe" not in pipeline.stderr, pipeline.stderr


def test_config_show_is_toml_that_config_check_accepts(env: dict[str, str], tmp_path: Path) -> None:
    """What `config show` prints is valid TOML: unset keys are comments, not `null`; `config check` accepts it."""
    env = {**env, "DISPATCHER_DATABASE__DSN": "postgresql://app@127.0.0.1:9/none"}  # no server needed
    shown = dispatcher("config", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "null" not in shown.stdout and "# proxy = (unset)" in shown.stdout
    path = tmp_path / "shown.toml"
    path.write_text(shown.stdout)
    checked = dispatcher(
        "config", "check", "--config", str(path), env={k: v for k, v in env.items() if k != "DISPATCHER_DATABASE__DSN"}
    )
    assert checked.returncode == 0 and checked.stdout.strip() == f"{path}: OK", checked.stdout + checked.stderr
