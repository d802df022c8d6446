"""`dispatcher receiver`, the sample receiver, against the daemon and against forgeries."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import pytest

from dispatcher import signing
from tests.support import REPO
from tests.support.daemon import start_daemon
from tests.support.factories import emit_many, make_webhook
from tests.support.network import free_port

pytestmark = pytest.mark.db


async def test_sample_receiver_verifies_every_format_and_refuses_forgeries(conn, dsn, daemon_factory, tmp_path):
    """The sample receiver, given the webhooks' secrets, prints verified events from standard, 4me and ricloud
    webhooks, and answers 400 (printing why) to a request signed with another secret or with a changed body."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ids = []
    secrets = []
    for fmt in ("standard", "4me", "ricloud"):
        webhook_id, secret = await make_webhook(conn, f"{url}/{fmt}", events=["request.create"], format=fmt)
        ids.append(webhook_id)
        secrets.append(secret)
    out = (tmp_path / "receiver.out").open("wb")
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispatcher", "receiver", "--listen", f"127.0.0.1:{port}",
        *[arg for s in secrets for arg in ("--secret", s)],
        stdout=out, stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # wait for it to listen
                try:
                    async with session.post(url + "/probe", data=b"{}") as response:
                        assert response.status == 400
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
            await start_daemon(daemon_factory, dsn)
            await emit_many(conn, 2)
            lines: list[dict[str, object]] = []
            deadline = time.monotonic() + 30
            while sum(1 for line in lines if line["verified"]) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                lines = [json.loads(x) for x in (tmp_path / "receiver.out").read_text().splitlines()]
            verified = [line for line in lines if line["verified"]]
            assert len(verified) == 6
            assert {str(line["path"]).split("/")[1] for line in verified} == {"standard", "4me", "ricloud"}

            body = b'{"id": "forged"}'
            headers = signing.standard_headers([signing.generate_secret()], "msg_forged", int(time.time()), body)
            async with session.post(url + "/standard", data=body, headers=headers) as response:
                assert response.status == 400
            headers = signing.standard_headers([secrets[0]], "msg_changed", int(time.time()), body)
            async with session.post(url + "/standard", data=body + b" ", headers=headers) as response:
                assert response.status == 400
                error = (await response.json())["error"]
                # It says which check failed, and why.
                assert error.startswith("Standard Webhooks signature (webhook-signature) did not verify"), error
                assert "no signature matches" in error
    finally:
        receiver.terminate()
        await receiver.wait()
        out.close()
