"""The `dispatcher` command. Commands that need no API talk to the database the configuration names."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from dispatcher import __version__, cli_api, logs
from dispatcher.config import Config, ConfigError, effective_settings, load_config
from dispatcher.db import (
    Database,
    SchemaTooNew,
    connect_pool,
    embedded_dsn,
    embedded_running,
    migrate_dsn,
    stop_embedded,
)
from dispatcher.db.rows import TaskRow, WebhookRow
from dispatcher.envelope import rfc3339
from dispatcher.errors import DispatcherError
from dispatcher.resources import (
    Context,
    Rejected,
    ResourceError,
    Scope,
    events,
    organisations,
    producers,
    status,
    tokens,
    webhooks,
)
from dispatcher.sender import mask_url
from dispatcher.vocab import Role, TaskState, WebhookFormat

log = structlog.get_logger("dispatcher.cli")

# The command-line option that gave each field an operation may refuse.
_FLAGS = {"url": "--url", "events": "--event", "payload": "--payload", "object_id": "--object-id",
          "idempotency_key": "--idempotency-key", "role": "--role", "name": "--name",
          "secret": "--secret"}  # fmt: skip

ROLES = tuple(Role)
FORMATS = tuple(WebhookFormat)


class UsageError(DispatcherError):
    """The command line asks for something that cannot be done."""


def database_dsn(config: Config) -> str:
    """The configured DSN, or the embedded database's (started if needed) when none is configured."""
    if config.database.dsn:
        return config.database.dsn
    return embedded_dsn(config.database.data_dir)


@contextlib.contextmanager
def database(config: Config) -> Iterator[str]:
    """The DSN for a command: the configured one, or the embedded database's, which is stopped again afterwards
    when this command started it (the daemon's running server is used and left running)."""
    if config.database.dsn:
        yield config.database.dsn
        return
    was_running = embedded_running(config.database.data_dir)
    try:
        yield embedded_dsn(config.database.data_dir)
    finally:
        if not was_running:
            stop_embedded(config.database.data_dir)


async def _with_db(config: Config, work: Callable[[Context], Awaitable[int]]) -> int:
    """Migrate when allowed, open a small pool, run `work` with it."""
    with database(config) as dsn:
        if config.database.auto_migrate:
            await migrate_dsn(dsn)
        db = Database(await connect_pool(dsn, 2))
        try:
            return await work(Context(db, config))
        finally:
            await db.close()


def _admin(organisation: str) -> Scope:
    """The CLI works on the database itself: an administrator of any organisation it names."""
    return Scope(organisation, Role.ADMIN)


# ---- run -------------------------------------------------------------------------------------------------


async def _first_admin_token(dsn: str) -> str | None:
    """On the embedded database's first start: organisation `default` and a new admin token (else None)."""
    db = Database(await connect_pool(dsn, 1))
    try:
        ctx = Context(db, load_config(None))
        # Only for an organisation made now: an operator who revoked every admin token meant it.
        if not await organisations.ensure(ctx, "default"):
            return None
        made = await tokens.create(ctx, _admin("default"), role=Role.ADMIN, name="first admin token")
        return made.secret
    finally:
        await db.close()


def _show_once(config: Config, token: str) -> None:
    """Print the token on a terminal; otherwise write it to a 0600 file and log only the file's path."""
    if sys.stdout.isatty():
        print(f"Admin token for organisation 'default' (shown once, keep it safe):\n{token}", flush=True)
        return
    path = Path(config.database.data_dir).expanduser().resolve() / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    log.info("dispatcher.admin_token_written", path=str(path), detail="read it once, then delete the file")


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from dispatcher import service

    embedded = not config.database.dsn
    dsn = database_dsn(config)

    async def first_start() -> str | None:
        await service.prepare_database(config, dsn)
        return await _first_admin_token(dsn)

    if embedded and (token := asyncio.run(first_start())):
        _show_once(config, token)
    code: int
    if config.worker.event_loop == "uvloop":
        import uvloop

        code = uvloop.run(service.run(config, dsn))
    else:
        code = asyncio.run(service.run(config, dsn))
    if embedded:
        stop_embedded(config.database.data_dir)
    return code


# ---- migrate, config ---------------------------------------------------------------------------------------


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    async def main() -> int:
        with database(config) as dsn:
            applied = await migrate_dsn(dsn)
        print("applied: " + ", ".join(applied) if applied else "the schema is up to date")
        return 0

    return asyncio.run(main())


def cmd_config_check(config: Config, args: argparse.Namespace) -> int:
    print(f"{config.source or 'defaults'}: OK")
    return 0


def cmd_config_show(config: Config, args: argparse.Namespace) -> int:
    settings = effective_settings(config)
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            # Valid TOML that `config check` reads back: unset keys as comments (TOML has no null).
            lines.append(f"# {key} = (unset)" if value is None else f"{key} = {json.dumps(value)}")
        lines.append("")
    print("\n".join(lines).rstrip())
    if not config.database.dsn:
        state = "running" if embedded_running(config.database.data_dir) else "not running: started and stopped again"
        with database(config) as dsn:
            print(f"\n# embedded database ({state}): {dsn}")
        print("# producers on this host connect to it through that socket while the daemon runs, e.g.")
        print(f"#   psql '{dsn}' -c \"SELECT dispatcher_emit('default', 'request.create', '{{}}')\"")
    else:
        print("\n# producers connect to [database] dsn with a login granted the role dispatcher_producer:")
        print("#   CREATE ROLE shop LOGIN PASSWORD '...' IN ROLE dispatcher_producer;")
        print("# or one confined to an organisation: dispatcher producer create --organisation ORG")
    return 0


# ---- token, webhook, emit, status ---------------------------------------------------------------------------


def cmd_org_create(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        row = await organisations.create(ctx, args.id, args.name or "")
        print(f"organisation {row.id} created; next: dispatcher token create --organisation {row.id} --role admin")
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_org_list(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        for row in await organisations.list_all(ctx):
            shown: dict[str, object] = {"id": row.id, "name": row.name, "contact_emails": list(row.contact_emails)}
            shown |= {"default_webhook_id": row.default_webhook_id, "created_at": rfc3339(row.created_at)}
            print(json.dumps(shown))
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_token_create(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        made = await tokens.create_with_organisation(ctx, args.organisation, role=Role(args.role), name=args.name or "")
        print(f"token {made.token.id} for organisation {args.organisation}, role {args.role}:")
        print(made.secret)
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_webhook_create(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        await organisations.require(ctx, args.organisation)
        made = await webhooks.create(
            ctx, _admin(args.organisation), url=args.url, events=args.event or [],
            format=WebhookFormat(args.format), name=args.name or "", secret=args.secret,
        )  # fmt: skip
        test_task = str(made.test.id) if made.test is not None else None
        print(json.dumps({**_webhook_json(made.webhook), "secret": made.secret, "test_task": test_task}))
        return 0

    return asyncio.run(_with_db(config, work))


def _webhook_json(row: WebhookRow) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out["url"] = mask_url(row.url)
    for key in ("created_at", "updated_at", "last_error_at", "failing_since"):
        out[key] = rfc3339(out[key]) if out[key] is not None else None
    out["events"] = list(row.events)
    return out


def cmd_webhook_list(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        if args.organisation is not None:
            await organisations.require(ctx, args.organisation)
        for row in await webhooks.list_all(ctx, args.organisation):
            print(json.dumps(_webhook_json(row)))
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_webhook_test(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        scope = _admin((await webhooks.find(ctx, args.id)).organisation)
        task = await webhooks.test(ctx, scope, args.id, wait=args.wait)
        print(json.dumps(_task_json(task)))
        return 0 if task.state != TaskState.FAILED else 1

    return asyncio.run(_with_db(config, work))


def _task_json(task: TaskRow) -> dict[str, Any]:
    return {
        "id": str(task.id),
        "type": task.type,
        "webhook_id": task.webhook_id,
        "state": task.state,
        "result": json.loads(task.result) if task.result else None,
        "date_created": rfc3339(task.created_at),
        "date_completed": rfc3339(task.completed_at) if task.completed_at else None,
    }


def cmd_webhook_pause(config: Config, args: argparse.Namespace) -> int:
    if cli_api.wants_api(args):  # --url or DISPATCHER_URL: over the API, else on the database
        return cli_api.pause_or_resume(config, args)
    paused = args.webhook_command == "pause"

    async def work(ctx: Context) -> int:
        scope = _admin((await webhooks.find(ctx, args.id)).organisation)
        await webhooks.set_paused(ctx, scope, args.id, paused)
        print(f"webhook {args.id} {'paused: deliveries are held' if paused else 'resumed'}")
        return 0

    return asyncio.run(_with_db(config, work))


def payload_text(given: str) -> str:
    """--payload: inline JSON, `@FILE` for a file's content, or `-` for standard input."""
    if given == "-":
        text = sys.stdin.read()
    elif given.startswith("@"):
        try:
            text = Path(given[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"--payload {given}: {exc.strerror or exc}") from None
    else:
        text = given
    try:
        json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from exc
    return text


def cmd_emit(config: Config, args: argparse.Namespace) -> int:
    text = payload_text(args.payload)

    async def work(ctx: Context) -> int:
        await organisations.require(ctx, args.organisation)
        try:
            event_id = await events.emit(
                ctx, _admin(args.organisation), type=args.type, payload_text=text,
                object_id=args.object_id, idempotency_key=args.idempotency_key,
            )  # fmt: skip
        except Rejected as exc:
            raise UsageError(f"{exc.code}: {exc}") from exc
        print(event_id)
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_producer_create(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        with database(config) as dsn:  # the daemon's DSN (the embedded server runs already, for _with_db)
            made = await producers.create(ctx, args.organisation, dsn=dsn, name=args.name)
        print(f"login {made.login} for organisation {made.organisation}; give its producer this DSN"
              " (the password is shown once):")  # fmt: skip
        print(made.dsn)
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        now = await status.figures(ctx.db)
        print("deliveries by state:")
        for row in now.deliveries:
            print(f"  {row.state:<10} {row.count}")
        due = now.ages.oldest_due_seconds
        print(f"oldest due pending delivery: {f'{due:.1f} s' if due is not None else 'none'}")
        unrouted = now.ages.oldest_unrouted_seconds
        oldest = f" (the oldest {unrouted:.1f} s old)" if unrouted is not None else ""
        print(f"events not yet routed: {now.ages.unrouted_events}{oldest}")
        rates = await status.rates(ctx.db)
        print(f"attempts in the last minute: {rates.delivered} delivered, {rates.failed} failed")
        print("webhooks by state:")
        for hooks in now.webhooks:
            paused = f" ({hooks.paused} paused)" if hooks.paused else ""
            print(f"  {hooks.state:<12} {hooks.count}{paused}")
        failing = await status.failing(ctx.db)
        print("failing webhooks:" if failing else "failing webhooks: none")
        for hook in failing:
            since = hook.oldest_waiting_since
            waiting = f", oldest waiting since {rfc3339(since)}" if since else ""
            paused = ", paused" if hook.paused else ""
            print(f"  {hook.id} ({hook.organisation}) {hook.state}{paused}: {hook.failures_last_hour} failures in the"
                  f" last hour{waiting}; last error: {hook.last_error or 'none'}")  # fmt: skip
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_secrets_rotate(config: Config, args: argparse.Namespace) -> int:
    from dispatcher.resources import secrets as at_rest

    async def work(ctx: Context) -> int:
        done = await at_rest.rotate(ctx)
        print(f"re-encrypted {done.webhooks} webhook(s) and {done.policies} policy key(s) under the current key")
        failed = [f"webhook {i}" for i in done.failed_webhooks] + [f"policy {i}" for i in done.failed_policies]
        if failed:
            print(f"dispatcher: not readable with the configured keys: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(_with_db(config, work))


def cmd_receiver(config: Config, args: argparse.Namespace) -> int:
    from dispatcher.receiver import serve

    key_file = args.public_key or args.shared_key_file
    if not args.secret and not key_file:
        print("dispatcher receiver: give --secret, --public-key or --shared-key-file", file=sys.stderr)
        return 2
    key = Path(key_file).read_text().strip() if key_file else None
    serve(args.listen, args.secret, jwt_key=key, issuer=args.issuer, audience=args.audience)
    return 0


# ---- parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --config and --log-format are accepted before or after the command (`dispatcher run --config FILE`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML file (default: ./dispatcher.toml)")
    common.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=argparse.SUPPRESS,
        help="override [log] format",
    )
    parser = argparse.ArgumentParser(prog="dispatcher", description="Webhook event-dispatch daemon.", parents=[common])
    parser.add_argument("--version", action="version", version=f"dispatcher {__version__}")
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    sub.add_parser("run", help="run the daemon").set_defaults(func=cmd_run)
    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=cmd_migrate)

    config = sub.add_parser("config", help="check or show the configuration")
    config_sub = sub.add_subparsers(config, "config_command")
    config_sub.add_parser("check", help="validate the configuration").set_defaults(func=cmd_config_check)
    config_sub.add_parser("show", help="print the effective settings").set_defaults(func=cmd_config_show)

    org = sub.add_parser("org", help="organisations")
    org_sub = sub.add_subparsers(org, "org_command")
    ocreate = org_sub.add_parser("create", help="create an organisation")
    ocreate.add_argument("id", help="lower-case letters, digits, - and _ (e.g. acme)")
    ocreate.add_argument("--name", help="a display name (default: the id)")
    ocreate.set_defaults(func=cmd_org_create)
    org_sub.add_parser("list", help="list organisations (one JSON object per line)").set_defaults(func=cmd_org_list)

    token = sub.add_parser("token", help="API tokens")
    token_sub = sub.add_subparsers(token, "token_command")
    create = token_sub.add_parser("create", help="create a token (and its organisation if missing)")
    create.add_argument("--organisation", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name")
    create.set_defaults(func=cmd_token_create)

    webhook = sub.add_parser("webhook", help="webhooks")
    webhook_sub = sub.add_subparsers(webhook, "webhook_command")
    wcreate = webhook_sub.add_parser("create", help="create a webhook; prints it with its secret")
    wcreate.add_argument("--organisation", required=True)
    wcreate.add_argument("--url", required=True)
    wcreate.add_argument("--event", action="append", help="subscription pattern (repeatable)")
    wcreate.add_argument("--format", choices=FORMATS, default="standard")
    wcreate.add_argument("--name")
    wcreate.add_argument("--secret", help="whsec_... of your own (default: a new one, printed)")
    wcreate.set_defaults(func=cmd_webhook_create)
    wtest = webhook_sub.add_parser("test", help="send a test to a webhook; prints the test task")
    wtest.add_argument("id", type=int)
    wtest.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait up to this long for the result")
    wtest.set_defaults(func=cmd_webhook_test)
    for action, text in (("pause", "hold new deliveries (tests still go)"), ("resume", "release held deliveries")):
        wpause = cli_api.add_api_arguments(webhook_sub.add_parser(action, help=text))
        wpause.add_argument("id", type=int)
        wpause.set_defaults(func=cmd_webhook_pause)
    wlist = webhook_sub.add_parser("list", help="list webhooks (one JSON object per line)")
    wlist.add_argument("--organisation")
    wlist.set_defaults(func=cmd_webhook_list)

    cli_api.add_commands(sub, token_sub, webhook_sub)  # the commands that speak the API

    emit = sub.add_parser("emit", help="insert an event; prints its id")
    emit.add_argument("--organisation", required=True)
    emit.add_argument("type")
    emit.add_argument("--payload", default="{}", help="JSON, @FILE to read it from a file, or - for stdin")
    emit.add_argument("--object-id")
    emit.add_argument("--idempotency-key")
    emit.set_defaults(func=cmd_emit)

    producer = sub.add_parser("producer", help="PostgreSQL logins for producers")
    producer_sub = sub.add_subparsers(producer, "producer_command")
    pcreate = producer_sub.add_parser("create", help="create a login confined to one organisation; prints its DSN")
    pcreate.add_argument("--organisation", required=True)
    pcreate.add_argument("--name", help="the login's name (default: producer_<organisation>_<random>)")
    pcreate.set_defaults(func=cmd_producer_create)

    sub.add_parser("status", help="queue depth, oldest pending age, rates, webhooks").set_defaults(func=cmd_status)

    secrets_cmd = sub.add_subparsers(sub.add_parser("secrets", help="secrets at rest"), "secrets_command")
    secrets_cmd.add_parser(
        "rotate", help="re-encrypt every webhook secret and policy key under [secrets] encryption_key (resumable)"
    ).set_defaults(func=cmd_secrets_rotate)

    receiver = sub.add_parser("receiver", help="a sample receiver: verifies signatures, prints events")
    receiver.add_argument("--listen", default="127.0.0.1:9000", help="host:port (default 127.0.0.1:9000)")
    receiver.add_argument("--secret", action="append", default=[], help="a webhook secret (repeatable)")
    receiver.add_argument(
        "--public-key", help="a webhook policy's public key PEM file: JWT bodies must verify with it (4me)"
    )
    receiver.add_argument("--shared-key-file", help="an hs256 webhook policy's shared key, in a file")
    receiver.add_argument("--issuer", help="the JWT iss to require ([api] public_url of the sender)")
    receiver.add_argument("--audience", help="the JWT aud to require (the policy's jwt_audience)")
    receiver.set_defaults(func=cmd_receiver)
    return parser


class _Subparsers:
    """add_subparsers() whose every command also takes the common options."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, parents=[self._common], **kwargs)
        return parser

    def add_subparsers(self, parser: argparse.ArgumentParser, dest: str) -> _Subparsers:
        return _Subparsers(parser.add_subparsers(dest=dest, required=True, metavar="ACTION"), self._common)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"dispatcher: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(getattr(args, "log_format", None) or config.log.format, config.log.level)
    func: Callable[[Config, argparse.Namespace], int] = args.func
    try:
        code = func(config, args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
        return code
    except ResourceError as exc:
        flag = _FLAGS.get(exc.field or "")
        print(f"dispatcher: {flag}: {exc}" if flag else f"dispatcher: {exc}", file=sys.stderr)
        return 1
    except (DispatcherError, SchemaTooNew) as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`dispatcher status | head -1`): nothing more to say, and no traceback. Python
        # flushes stdout once more at exit, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
