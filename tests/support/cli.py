"""The `dispatcher` command as a user runs it: a subprocess of this interpreter, in the repository."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.support import REPO


async def run_cli(*args: str, config: Path | None = None) -> tuple[int, str, str]:
    """Run `python -m dispatcher ARGS [--config FILE]`; returns (exit code, stdout, stderr)."""
    extra = ["--config", str(config)] if config else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispatcher", *args, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
