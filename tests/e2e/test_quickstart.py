"""The README's quickstart runs as it is written: its `# quickstart` shell block, taken from README.md, is run by
bash in a fresh copy of the repository (a fresh data directory), and must succeed with the receiver printing
both events, verified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from dispatcher.db import stop_embedded
from tests.support import REPO

pytestmark = pytest.mark.db


def quickstart_block() -> str:
    """The fenced ```sh block of README.md whose first line is `# quickstart`."""
    text = (REPO / "README.md").read_text()
    for block in text.split("```sh\n")[1:]:
        body = block.split("```", 1)[0]
        if body.startswith("# quickstart\n"):
            return body
    raise AssertionError("README.md has no ```sh block starting with # quickstart")


def fresh_copy(target: Path) -> None:
    """The repository's tracked files (what a clone has), sharing this checkout's virtualenv (no install)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source, destination = REPO / name, target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            destination.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, destination)
    (target / ".venv").symlink_to(REPO / ".venv")


@pytest.mark.timeout(180)
def test_the_readme_quickstart_runs_verbatim(tmp_path: Path) -> None:
    """bash -euo pipefail on the README's block: every command succeeds, the receiver prints the two events
    (the second one delivered after the receiver came back), each verified, with their subjects."""
    stamp = REPO / ".venv" / ".dispatcher-installed"
    wanted = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        # scripts/run in the copy would reinstall, pointing the shared virtualenv's editable install at the copy.
        pytest.skip("the virtualenv's install stamp is missing or stale (scripts/test writes it); run scripts/test")
    copy = tmp_path / "clone"
    fresh_copy(copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "VIRTUAL_ENV"))}
    script = "set -euo pipefail\n" + quickstart_block()
    process = subprocess.Popen(
        ["bash", "-c", script], cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        stop_embedded(str(copy / "dispatcher-data"))
    assert process.returncode == 0, output + "\n--- daemon.log\n" + (copy / "daemon.log").read_text()[-3000:]
    received = [json.loads(line) for line in (copy / "received.jsonl").read_text().splitlines() if line.strip()]
    events = [r for r in received if r.get("event", {}).get("type") == "request.create"]
    assert [e["event"]["data"]["subject"] for e in events] == ["Printer on fire", "Still on fire"]
    assert all(e["verified"] for e in events)
    assert "connection refused" in output and "failing webhooks:" in output
