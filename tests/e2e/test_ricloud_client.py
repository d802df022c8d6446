"""The real ricloud-py 3.2.0 client, unchanged, against the ricloud dialect of the API (SPEC §8), and ricloud-py's
own receiver (`ricloud event listen`) receiving what the daemon delivers.

ricloud-py pins click 7 and Flask 1.1, so it lives in its own virtualenv, `.venv-ricloud` at the top of the
repository (scripts/test makes it):

    python3 -m venv .venv-ricloud
    .venv-ricloud/bin/pip install 'ricloud[event]==3.2.0' 'markupsafe<2.1'

It reads RICLOUD_URL and RICLOUD_TOKEN (and RICLOUD_SECRET for its receiver, RICLOUD_AWAIT_FOR for the
Ricloud-Await header) from the environment. Run with -s to see everything the CLI and the receiver printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import REPO
from tests.support.api import Org, Server, call, make_org, module_server
from tests.support.network import free_port
from tests.support.receivers import Receiver
from tests.support.waits import poll

pytestmark = pytest.mark.db

VENV = REPO / ".venv-ricloud"
RICLOUD = VENV / "bin" / "ricloud"
PYTHON = VENV / "bin" / "python"
CREATE_VENV = "python3 -m venv .venv-ricloud && .venv-ricloud/bin/pip install 'ricloud[event]==3.2.0' 'markupsafe<2.1'"

# ricloud-py's resources, driven from its own interpreter: one operation per run, its result printed as
# ricloud-py shows it, then as JSON on the last line for the test to read.
SCRIPT = r"""
import json, sys
import ricloud
from ricloud import Event, Organisation, WebhookConfig
from ricloud.exceptions import RequestError

op, args = sys.argv[1], sys.argv[2:]

def show(result):
    print(repr(result))
    print(json.dumps(result.attrs, default=lambda r: getattr(r, "attrs", str(r))))

if op == "list":
    configs = WebhookConfig.list()
    print(repr(configs))
    print(json.dumps([dict(c.attrs) for c in configs.data]))
elif op == "retrieve":
    show(WebhookConfig.retrieve(int(args[0])))
elif op == "update_with_id":
    show(WebhookConfig.update_with_id(int(args[0]), url=args[1]))
elif op == "update":
    config = WebhookConfig.retrieve(int(args[0]))
    config.update(url=args[1])
    show(config)
elif op == "organisation_default":
    organisation = Organisation.retrieve()
    organisation.update(default_webhook_config=WebhookConfig(id=int(args[0])))
    show(organisation)
elif op == "events":
    events = Event.list()
    print(repr(events))
    print(json.dumps([dict(e.attrs) for e in events.data]))
elif op == "create_and_delete":
    config = WebhookConfig.create(url=args[0])
    print(repr(config))
    config.delete()
    show(config)
elif op == "retrieve_missing":
    try:
        WebhookConfig.retrieve(int(args[0]))
    except RequestError as exc:
        print(str(exc))
        print(json.dumps({"status": exc.status, "error": exc.error, "message": exc.message, "params": exc.params}))
"""


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon (worker and API) for the module."""
    with module_server(pg_server, tmp_path_factory.mktemp("ricloud-daemon"), {}) as s:
        yield s


class Transcript:
    """Everything ricloud-py printed, in order, printed at the end of the test (pytest -s shows it)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, title: str, text: str) -> None:
        self.parts.append(f"==== {title}\n{text.rstrip()}\n")

    def dump(self) -> None:
        print("\n" + "\n".join(self.parts), flush=True)


class RicloudPy:
    """Runs ricloud-py's CLI and scripts from .venv-ricloud with the API's address and a token."""

    def __init__(self, server: Server, org: Org, home: Path, transcript: Transcript) -> None:
        self.transcript = transcript
        self.script = home / "ricloud_ops.py"
        self.script.write_text(SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RICLOUD_", "VIRTUAL_ENV", "PYTHON"))}
        # HOME: no ~/.ricloud.ini of whoever runs the tests.
        self.env = {
            **env,
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "RICLOUD_URL": server.url + "/",
            "RICLOUD_TOKEN": org.admin,
        }

    async def run(self, *argv: str, env: dict[str, str] | None = None, expect: int = 0) -> str:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**self.env, **(env or {})},
            cwd=self.script.parent,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        text = out.decode(errors="replace")
        shown = " ".join(Path(a).name if a.startswith("/") and a.endswith(".py") else a for a in argv)
        shown = shown.replace(str(VENV) + "/bin/", "")
        extra = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        self.transcript.add(f"$ {extra + ' ' if extra else ''}{shown}   (exit {process.returncode})", text)
        assert process.returncode == expect, f"{shown} exited {process.returncode}:\n{text}"
        return text

    async def cli(self, *args: str, env: dict[str, str] | None = None, expect: int = 0) -> str:
        return await self.run(str(RICLOUD), *args, env=env, expect=expect)

    async def op(self, *args: str) -> Any:
        """One operation of SCRIPT; returns the JSON of its last line."""
        text = await self.run(str(PYTHON), str(self.script), *args)
        return json.loads(text.strip().splitlines()[-1])


def resource_from_cli(text: str) -> dict[str, Any]:
    """The resource `ricloud webhook-config create` printed: `WebhookConfig({...json...})`."""
    match = re.search(r"WebhookConfig\((\{.*\})\)", text, re.S)
    assert match, text
    return json.loads(match.group(1))


class Listener:
    """`ricloud event listen 127.0.0.1 PORT` (ricloud-py's Flask receiver) with RICLOUD_SECRET, its output in a
    file; serves POST /webhooks/<uuid>."""

    def __init__(self, ricloud: RicloudPy, secret: str, log: Path) -> None:
        self.ricloud = ricloud
        self.port = free_port()
        self.secret = secret
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                str(RICLOUD),
                "event",
                "listen",
                "127.0.0.1",
                str(self.port),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**self.ricloud.env, "RICLOUD_SECRET": self.secret},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.returncode is None, f"ricloud event listen exited:\n{self.output()}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError(f"ricloud event listen not listening within 30 s:\n{self.output()}")

    async def wait_for(self, text: str, count: int = 1) -> None:
        async def seen() -> bool:
            return self.output().count(text) >= count

        try:
            await poll(seen, f"{text!r} x{count} in ricloud event listen's output")
        except AssertionError:
            raise AssertionError(
                f"{text!r} not printed {count} time(s); the listener printed:\n{self.output()}"
            ) from None

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)


async def config_state(server: Server, org: Org, webhook_id: int) -> str:
    reply = await call(server.url, "GET", f"/configs/webhook/{webhook_id}", token=org.admin)
    assert reply.status == 200, reply
    return str(reply.body["state"])


@pytest.mark.timeout(25)
async def test_ricloud_py_cli_resources_and_receiver(server: Server, receiver: Receiver, tmp_path: Path) -> None:
    """ricloud-py 3.2.0 unchanged: `webhook-config create --url` and `webhook-config test ID` work; WebhookConfig
    list/retrieve/update/update_with_id/create/delete and Organisation retrieve/update work; its receiver prints
    "Test event received!" for our tests and the body of a real event routed to it as the organisation default,
    never "verification failed"; the config ends valid; an API error shows our message, not None."""
    if not RICLOUD.exists():
        pytest.fail(f"ricloud-py is not installed in {VENV}; create it (scripts/test does) with:\n  {CREATE_VENV}")
    org = await make_org(server.dsn, "ricloud")
    transcript = Transcript()
    ricloud = RicloudPy(server, org, tmp_path, transcript)
    listener: Listener | None = None
    try:
        # The config points at ricloud-py's receiver, which serves POST /webhooks/<event id>.
        port_holder = Listener(ricloud, "", tmp_path / "unused.log")
        url = port_holder.url
        created = resource_from_cli(await ricloud.cli("webhook-config", "create", "--url", url))
        assert created["resource"] == "webhook_config" and created["url"] == url, created
        assert created["state"] == "new" and created["secret"].startswith("whsec_"), created
        webhook_id = created["id"]

        listener = Listener(ricloud, created["secret"], tmp_path / "listener.log")
        listener.port = port_holder.port
        await listener.start()

        # The test call (ricloud-py posts the body `null`), waiting for the result through RICLOUD_AWAIT_FOR.
        tested = await ricloud.cli("webhook-config", "test", str(webhook_id), env={"RICLOUD_AWAIT_FOR": "10"})
        assert '"webhook_config.test"' in tested and '"succeeded"' in tested, tested
        await listener.wait_for("Test event received!")
        assert await config_state(server, org, webhook_id) == "valid"
        # Without Ricloud-Await the CLI prints the task as it is (pending or already done).
        tested = await ricloud.cli("webhook-config", "test", str(webhook_id))
        assert '"resource": "task"' in tested, tested
        await listener.wait_for("Test event received!", count=2)

        listed = await ricloud.op("list")
        assert [c["id"] for c in listed] == [webhook_id] and "secret" not in listed[0], listed
        retrieved = await ricloud.op("retrieve", str(webhook_id))
        assert retrieved["id"] == webhook_id and retrieved["url"] == url, retrieved

        # A real event, routed to the receiver as the organisation default (inserted with no key).
        organisation = await ricloud.op("organisation_default", str(webhook_id))
        assert organisation["default_webhook_config"] == webhook_id, organisation
        conn = await asyncpg.connect(server.dsn)
        try:
            event_id = await conn.fetchval(
                "INSERT INTO events (organisation, type, payload) VALUES ($1, 'task.succeeded', $2::jsonb)"
                " RETURNING id::text",
                org.id,
                json.dumps({"hello": "ricloud-py", "n": 7}),
            )
        finally:
            await conn.close()
        await listener.wait_for(event_id)
        assert '"hello": "ricloud-py"' in listener.output()
        assert f'"id": "{event_id}"' in listener.output() and '"action": "succeeded"' in listener.output()
        events = await ricloud.op("events")
        assert [(e["id"], e["type"], e["action"]) for e in events] == [(event_id, "task", "succeeded")], events

        # update_with_id to another receiver (new state and a test there), then update back (tested again).
        before = len(receiver.arrivals)
        moved = await ricloud.op("update_with_id", str(webhook_id), receiver.url)
        assert moved["url"] == receiver.url and moved["state"] == "new", moved
        await receiver.wait_count(before + 1)
        assert receiver.arrivals[-1].json["type"] == "webhook_config"
        back = await ricloud.op("update", str(webhook_id), url)
        assert back["url"] == url and back["state"] in ("new", "valid"), back
        await listener.wait_for("Test event received!", count=3)

        async def valid() -> bool:
            return await config_state(server, org, webhook_id) == "valid"

        await poll(valid, "the config valid after its url came back")

        # Delete answers the resource, which ricloud-py parses.
        deleted = await ricloud.op("create_and_delete", receiver.url)
        assert deleted["resource"] == "webhook_config" and deleted["id"] != webhook_id, deleted
        gone = await call(server.url, "GET", f"/configs/webhook/{deleted['id']}", token=org.admin)
        assert gone.status == 404, gone

        # Errors: ricloud-py prints the API's message, not None.
        failed = await ricloud.cli("webhook-config", "create", "--url", "ftp://example.com/hook", expect=1)
        assert "RequestError" in failed and "status:400" in failed, failed
        assert "message:'None'" not in failed and "message:'url" in failed and '"url"' in failed, failed
        missing = await ricloud.op("retrieve_missing", "999999")
        assert missing["status"] == 404 and missing["message"] and missing["error"] == "not_found", missing

        assert await config_state(server, org, webhook_id) == "valid"
        output = listener.output()
        assert "verification failed" not in output.lower(), output
        assert '" 400 -' not in output, output  # every delivery was accepted
    finally:
        if listener is not None:
            await listener.stop()
            transcript.add(
                f"$ RICLOUD_SECRET=<secret> ricloud event listen 127.0.0.1 {listener.port}", listener.output()
            )
        transcript.dump()
