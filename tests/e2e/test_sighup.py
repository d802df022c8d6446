"""SIGHUP re-reads the configuration file's [log] level and [secrets] keys; a file that no longer loads keeps them in
force."""

from __future__ import annotations

import base64
import os
import signal

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from dispatcher.secretbox import Keyring, key_id
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


async def test_sighup_reloads_the_secrets_keys(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """A webhook whose secret is sealed under a key the daemon lacks fails its attempts (request_build, naming the
    key id); SIGHUP after that key joins `[secrets] old_keys` applies it (`dispatcher.keys_reloaded`, no restart
    asked for), and the next event is signed so that standardwebhooks verifies it. A new `encryption_key` is
    applied to the worker too, and named in `dispatcher.restart_needed` since the API seals under the key it
    started with. Nothing else changed, nothing is logged as such."""
    k1, k2, k3 = (base64.b64encode(os.urandom(32)).decode() for _ in range(3))
    webhook_id, secret = await make_webhook(conn, receiver.url, events=["request.create"])
    sealed = Keyring.of(k2).seal(secret)
    await conn.execute(
        "UPDATE webhook SET secrets = jsonb_build_array(jsonb_build_object('secret', $2::text)) WHERE id = $1",
        webhook_id,
        sealed,
    )
    daemon: Daemon = daemon_factory(dsn, secrets={"encryption_key": k1}).start()
    await daemon.wait_ready()
    first = await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}')")
    await wait_db(conn, "SELECT state FROM delivery WHERE event_id = $1", "failed", first)
    errors = await conn.fetch("SELECT DISTINCT error_class, error FROM attempt")
    assert [r["error_class"] for r in errors] == ["request_build"]
    assert key_id(base64.b64decode(k2)) in errors[0]["error"]
    assert receiver.arrivals == []

    write_config(daemon.config, dsn, {"secrets": {"encryption_key": k1, "old_keys": [k2]}})
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    reloaded = await daemon.wait_line("dispatcher.keys_reloaded")
    assert reloaded["key_id"] == key_id(base64.b64decode(k1)) and reloaded["old_keys"] == 1
    second = await _deliver_one(conn, receiver, 1)
    arrival = receiver.arrivals[0]
    assert arrival.message_id == second
    Webhook(secret).verify(arrival.body, arrival.headers)
    assert daemon.find("dispatcher.restart_needed") is None

    write_config(daemon.config, dsn, {"secrets": {"encryption_key": k3, "old_keys": [k2]}})
    daemon.process.send_signal(signal.SIGHUP)
    restart = await daemon.wait_line("dispatcher.restart_needed")
    assert restart["changed"] == ["secrets.encryption_key"]
    reloads = [line["key_id"] for line in daemon.lines() if line.get("event") == "dispatcher.keys_reloaded"]
    assert reloads == [key_id(base64.b64decode(k)) for k in (k1, k3)]
    await _deliver_one(conn, receiver, 2)
    Webhook(secret).verify(receiver.arrivals[1].body, receiver.arrivals[1].headers)
    log_text = daemon.log_text()
    assert all(k not in log_text for k in (k1, k2, k3))
    daemon.terminate()
    assert await daemon.wait_exit() == 0, daemon.log_path.read_text()
