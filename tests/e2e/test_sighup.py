"""SIGHUP re-reads the configuration file's [log] level; a file that no longer loads keeps the level in force."""

from __future__ import annotations

import signal

import asyncpg
import pytest

from tests.support.daemon import Daemon, write_config
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db


async def _deliver_one(conn: asyncpg.Connection, receiver: Receiver, n: int) -> str:
    """Emit an event and wait until it is delivered and recorded; returns its id.

    The daemon writes its `delivery.attempt` line before the result reaches the database, so once the row says
    delivered the line is in the log if the level lets it through.
    """
    event_id = await conn.fetchval(
        "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', '{}') RETURNING id"
    )
    await receiver.wait_count(n)
    await wait_db(conn, "SELECT state FROM delivery WHERE event_id = $1", "delivered", event_id)
    return str(event_id)


def _attempt_lines(daemon: Daemon, event_id: str) -> list[dict[str, object]]:
    return [line for line in daemon.lines() if line.get("event") == "delivery.attempt" and line["event_id"] == event_id]


async def test_sighup_rereads_the_log_level(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """At level warning no attempt line is written; SIGHUP with a broken file logs an error and keeps warning;
    SIGHUP after the file says info brings attempt lines back, and names other changed settings (which need a
    restart) without applying them. The daemon keeps running throughout and drains with exit code 0."""
    await make_webhook(conn, receiver.url, events=["request.create"])
    daemon: Daemon = daemon_factory(dsn, log={"level": "warning"}).start()

    first = await _deliver_one(conn, receiver, 1)
    assert _attempt_lines(daemon, first) == []
    assert not any(line.get("level") == "info" for line in daemon.lines())

    daemon.config.write_text(daemon.config.read_text() + "\n[log\n")  # not TOML any more
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    failed = await daemon.wait_line("dispatcher.reload_failed")
    assert failed["level"] == "error" and "invalid TOML" in str(failed["error"])
    second = await _deliver_one(conn, receiver, 2)
    assert _attempt_lines(daemon, second) == [], "a failed reload changed the level"

    write_config(daemon.config, dsn, {"log": {"level": "info"}, "worker": {"concurrency": 7}})
    daemon.process.send_signal(signal.SIGHUP)
    reloaded = await daemon.wait_line("dispatcher.reloaded")
    assert reloaded["level"] == "info" and reloaded["previous_level"] == "warning"
    restart = await daemon.wait_line("dispatcher.restart_needed")
    assert restart["changed"] == ["worker.concurrency"]
    third = await _deliver_one(conn, receiver, 3)
    assert len(_attempt_lines(daemon, third)) == 1

    assert daemon.process.poll() is None
    daemon.terminate()
    assert await daemon.wait_exit() == 0, daemon.log_path.read_text()
