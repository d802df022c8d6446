"""The `dispatcher` commands that speak the management API (an aiohttp client): the delivery log, redeliver,
replay with a progress bar, webhooks, tokens and event types. `--url`/`--token`, or DISPATCHER_URL and
DISPATCHER_TOKEN. Tables by default, `--json` for scripts; an API error prints the API's message and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp

from dispatcher import __version__

DEFAULT_URL = "http://127.0.0.1:8080"
# How often `replay` reads the replay's progress.
PROGRESS_SECONDS = 0.5


class ApiFailure(Exception):
    """The API answered an error (or could not be reached); the message is what to print."""


class _Adder(Protocol):
    """cli._Subparsers: add_parser gives every command the common options (--config, --log-format)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...

    def add_subparsers(self, parser: argparse.ArgumentParser, dest: str) -> _Adder: ...


def add_api_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every API command takes."""
    parser.add_argument("--url", default=argparse.SUPPRESS, help=f"the API (default: $DISPATCHER_URL, {DEFAULT_URL})")
    parser.add_argument("--token", default=argparse.SUPPRESS, help="an API token (default: $DISPATCHER_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def wants_api(args: argparse.Namespace) -> bool:
    """Whether a command that also works on the database was pointed at the API (--url or DISPATCHER_URL)."""
    return bool(getattr(args, "url", None) or os.environ.get("DISPATCHER_URL"))


class Client:
    """One session to the API with the caller's token."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = (getattr(args, "url", None) or os.environ.get("DISPATCHER_URL") or DEFAULT_URL).rstrip("/")
        token = getattr(args, "token", None) or os.environ.get("DISPATCHER_TOKEN")
        if not token:
            raise ApiFailure("no API token: give --token or set DISPATCHER_TOKEN")
        self._headers = {"Authorization": f"Token {token}", "User-Agent": f"dispatcher-cli/{__version__}"}

    async def __call__(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        """The JSON answer (None for an empty one); ApiFailure with the API's message on an error."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=self._headers) as session,
                session.request(method, self.base + path, json=body, params=params) as response,
            ):
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiFailure(f"cannot reach the API at {self.base}: {exc or type(exc).__name__}") from None
        data = json.loads(text) if text.strip() else None
        if response.status >= 400:
            raise ApiFailure(f"{_message(data, text)} (HTTP {response.status})")
        return data


def _message(data: Any, text: str) -> str:
    """The error message of any dialect's error shape."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            field = f"{error['field']}: " if error.get("field") and error["field"] not in error["message"] else ""
            return f"{field}{error['message']}"
        if isinstance(data.get("message"), str):
            return str(data["message"])
        if isinstance(data.get("errors"), list) and data["errors"]:
            return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in data["errors"])
        if isinstance(error, str):
            return error
    return text.strip()[:500] or "error"


# ---- output ---------------------------------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as an aligned text table; `columns` are (key, heading)."""
    cells = [[heading for _, heading in columns]]
    cells += [["" if row.get(key) is None else str(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def fields(record: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """One record as `key: value` lines."""
    keys = keys or list(record)
    width = max(len(k) for k in keys)
    lines = []
    for key in keys:
        value = record.get(key)
        shown = json.dumps(value) if isinstance(value, dict | list) else "" if value is None else str(value)
        lines.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(lines)


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else render(data))


def _more(page: dict[str, Any]) -> None:
    if page.get("next_cursor"):
        print(f"(more: --cursor {page['next_cursor']})", file=sys.stderr)


# ---- commands -------------------------------------------------------------------------------------------------

DELIVERY_COLUMNS = (("id", "ID"), ("event_id", "EVENT"), ("event_type", "TYPE"), ("kind", "KIND"),
                    ("state", "STATE"), ("attempts", "ATTEMPTS"), ("last_status", "STATUS"),
                    ("last_error", "LAST ERROR"), ("created_at", "CREATED"))  # fmt: skip
ATTEMPT_COLUMNS = (("number", "#"), ("started_at", "STARTED"), ("status", "STATUS"), ("duration_ms", "MS"),
                   ("error_class", "ERROR CLASS"), ("error", "ERROR"), ("response", "RESPONSE"))  # fmt: skip
REPLAY_KEYS = ("id", "webhook_id", "state", "since", "until", "only_failed", "types", "events_considered",
               "deliveries_created", "delivered", "failed", "in_progress", "error", "created_at",
               "completed_at")  # fmt: skip
WEBHOOK_KEYS = ("id", "name", "uri", "events", "format", "state", "paused", "disabled", "last_error",
                "description", "created_at", "updated_at")  # fmt: skip


async def deliveries_list(client: Client, args: argparse.Namespace) -> int:
    if (args.webhook is None) == (args.event is None):
        raise ApiFailure("give exactly one of --webhook ID and --event ID")
    path = f"/webhooks/{args.webhook}/deliveries" if args.webhook is not None else f"/events/{args.event}/deliveries"
    params = {k: v for k, v in (("state", args.state), ("kind", args.kind), ("type", args.type),
              ("since", args.since), ("until", args.until), ("cursor", args.cursor),
              ("limit", str(args.limit))) if v}  # fmt: skip
    page = await client("GET", path, params=params)
    emit(args, page, lambda p: table([_delivery_row(d) for d in p["data"]], DELIVERY_COLUMNS))
    _more(page)
    return 0


def _delivery_row(delivery: dict[str, Any]) -> dict[str, Any]:
    state = "dead letter" if delivery.get("dead_letter") else delivery["state"]
    error = (delivery.get("last_error") or "")[:40]
    return {**delivery, "state": state, "last_error": error}


async def deliveries_show(client: Client, args: argparse.Namespace) -> int:
    detail = await client("GET", f"/deliveries/{args.id}")

    def render(d: dict[str, Any]) -> str:
        head = {k: v for k, v in _delivery_row(d).items() if k not in ("attempt_log", "request")}
        head["last_error"] = d.get("last_error")
        request = d["request"]
        headers = "\n".join(f"  {k}: {v}" for k, v in request["headers"].items())
        attempts = [{**a, "response": (a.get("response") or "")[:60].replace("\n", " ")} for a in d["attempt_log"]]
        return (
            f"{fields(head)}\n\nrequest: POST {request['url']}\n{headers}\n\n"
            f"attempts:\n{table(attempts, ATTEMPT_COLUMNS) if attempts else '  none yet'}"
        )

    emit(args, detail, render)
    return 0


async def deliveries_redeliver(client: Client, args: argparse.Namespace) -> int:
    made = await client("POST", f"/deliveries/{args.id}/redeliver")
    emit(args, made, lambda d: f"redelivery {d['id']} of event {d['event_id']} queued ({d['state']})")
    return 0


def _bar(replay: dict[str, Any], width: int = 30) -> str:
    total = replay["deliveries_created"]
    done = replay["delivered"] + replay["failed"]
    filled = int(width * done / total) if total else (width if replay["state"] != "running" else 0)
    walked = "" if replay.get("walked") else f", walking the window ({replay['events_considered']} events so far)"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"({replay['delivered']} delivered, {replay['failed']} failed){walked} {replay['state']}"
    )


async def replay(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"since": args.since, "only_failed": not args.all}
    if args.until:
        body["until"] = args.until
    if args.type:
        body["types"] = args.type
    current = await client("POST", f"/webhooks/{args.webhook}/replay", body=body)
    if not args.json:
        print(f"replay {current['id']} of webhook {args.webhook}: {current['state']}", flush=True)
    if args.no_wait:
        if args.json:
            emit(args, current, str)
        return 0
    tty = sys.stdout.isatty() and not args.json
    last = ""
    while True:
        line = _bar(current)
        if not args.json and line != last:
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
            last = line
        if current["state"] != "running":
            break
        await asyncio.sleep(PROGRESS_SECONDS)
        current = await client("GET", f"/replays/{current['id']}")
    if tty:
        print()
    if args.json:
        emit(args, current, str)
    elif current.get("error"):
        print(f"replay {current['state']}: {current['error']}", file=sys.stderr)
    return 0 if current["state"] == "completed" and current["failed"] == 0 else 1


async def replay_show(client: Client, args: argparse.Namespace) -> int:
    current = await client("GET", f"/replays/{args.id}")
    emit(args, current, lambda r: f"{fields(r, REPLAY_KEYS)}\n{_bar(r)}")
    return 0


async def webhook_show(client: Client, args: argparse.Namespace) -> int:
    webhook = await client("GET", f"/webhooks/{args.id}")
    emit(args, webhook, lambda w: fields(w, [k for k in WEBHOOK_KEYS if k in w]))
    return 0


async def webhook_update(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.new_url is not None:
        body["uri"] = args.new_url
    if args.event:
        body["events"] = args.event
    if args.name is not None:
        body["name"] = args.name
    if args.description is not None:
        body["description"] = args.description
    if args.disable or args.enable:
        body["disabled"] = bool(args.disable)
    if not body:
        raise ApiFailure("nothing to change: give --new-url, --event, --name, --description, --enable or --disable")
    webhook = await client("PATCH", f"/webhooks/{args.id}", body=body)
    emit(args, webhook, lambda w: fields(w, [k for k in WEBHOOK_KEYS if k in w]))
    return 0


async def webhook_delete(client: Client, args: argparse.Namespace) -> int:
    await client("DELETE", f"/webhooks/{args.id}")
    emit(args, {"id": args.id, "deleted": True}, lambda _: f"webhook {args.id} deleted")
    return 0


async def webhook_rotate(client: Client, args: argparse.Namespace) -> int:
    rotated = await client("POST", f"/webhooks/{args.id}/rotate_secret", body={"overlap_seconds": args.overlap})
    emit(args, rotated, lambda r: (
        f"new secret of webhook {r['webhook_id']} (shown once):\n{r['secret']}\n"
        f"the previous secret signs too until {r['previous_expires_at']}"
    ))  # fmt: skip
    return 0


async def webhook_pause(client: Client, args: argparse.Namespace) -> int:
    action = args.webhook_command
    webhook = await client("POST", f"/webhooks/{args.id}/{action}")
    text = "paused: new deliveries are held" if webhook["paused"] else "resumed: held deliveries are released"
    emit(args, webhook, lambda w: f"webhook {w['id']} {text}")
    return 0


async def token_list(client: Client, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit), **({"cursor": str(args.cursor)} if args.cursor else {})}
    page = await client("GET", "/tokens", params=params)
    columns = (("id", "ID"), ("name", "NAME"), ("role", "ROLE"), ("webhook_id", "WEBHOOK"),
               ("created_at", "CREATED"), ("last_used_at", "LAST USED"), ("revoked_at", "REVOKED"))  # fmt: skip
    emit(args, page, lambda p: table(p["data"], columns))
    _more(page)
    return 0


async def token_revoke(client: Client, args: argparse.Namespace) -> int:
    token = await client("DELETE", f"/tokens/{args.id}")
    emit(args, token, lambda t: f"token {t['id']} ({t['name']}) revoked at {t['revoked_at']}")
    return 0


async def event_types_list(client: Client, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:  # the whole catalogue: it is small
        page = await client("GET", "/event_types", params={"limit": "100", **({"cursor": cursor} if cursor else {})})
        rows += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    columns = (("name", "NAME"), ("source", "SOURCE"), ("description", "DESCRIPTION"))
    emit(args, rows, lambda r: table(r, columns))
    return 0


async def event_types_create(client: Client, args: argparse.Namespace) -> int:
    made = await client("POST", "/event_types", body={"name": args.name, "description": args.description or ""})
    emit(args, made, lambda t: f"event type {t['name']} added")
    return 0


Command = Callable[[Client, argparse.Namespace], Any]


def runner(command: Command) -> Callable[[Any, argparse.Namespace], int]:
    """The `func` of an API command: run it, print an API error's message, exit 1 on failure."""

    def run(config: Any, args: argparse.Namespace) -> int:
        async def main() -> int:
            code: int = await command(Client(args), args)
            return code

        try:
            return asyncio.run(main())
        except ApiFailure as exc:
            print(f"dispatcher: {exc}", file=sys.stderr)
            return 1

    return run


pause_or_resume = runner(webhook_pause)


# ---- the parser ---------------------------------------------------------------------------------------------


def add_commands(sub: _Adder, token_sub: _Adder, webhook_sub: _Adder) -> None:
    """Register the API commands on the `dispatcher` parser (cli.build_parser)."""
    api = add_api_arguments

    lst = token_sub.add_parser("list", help="list the organisation's tokens (API)")
    lst.add_argument("--limit", type=int, default=25)
    lst.add_argument("--cursor", type=int)
    api(lst).set_defaults(func=runner(token_list))
    rev = token_sub.add_parser("revoke", help="revoke a token (API)")
    rev.add_argument("id", type=int)
    api(rev).set_defaults(func=runner(token_revoke))

    show = webhook_sub.add_parser("show", help="show a webhook (API)")
    show.add_argument("id", type=int)
    api(show).set_defaults(func=runner(webhook_show))
    upd = webhook_sub.add_parser("update", help="change a webhook's URL, events, name or state (API)")
    upd.add_argument("id", type=int)
    upd.add_argument("--new-url", help="the receiver's new URL (the webhook is tested again)")
    upd.add_argument("--event", action="append", help="subscription pattern (repeatable; replaces the list)")
    upd.add_argument("--name")
    upd.add_argument("--description")
    upd.add_argument("--enable", action="store_true", help="re-enable (state new, a test is sent)")
    upd.add_argument("--disable", action="store_true", help="deactivate")
    api(upd).set_defaults(func=runner(webhook_update))
    dele = webhook_sub.add_parser("delete", help="delete a webhook (API)")
    dele.add_argument("id", type=int)
    api(dele).set_defaults(func=runner(webhook_delete))
    rot = webhook_sub.add_parser("rotate-secret", help="a new signing secret; the old one overlaps (API)")
    rot.add_argument("id", type=int)
    rot.add_argument("--overlap", type=int, default=86400, metavar="SECONDS",
                     help="how long the old secret still signs (default 86400, at most 604800)")  # fmt: skip
    api(rot).set_defaults(func=runner(webhook_rotate))

    deliveries = sub.add_parser("deliveries", help="the delivery log; redeliver (API)")
    dsub = sub.add_subparsers(deliveries, "deliveries_command")
    dl = api(dsub.add_parser("list", help="a webhook's or an event's deliveries, newest first"))
    dl.add_argument("--webhook", type=int)
    dl.add_argument("--event")
    dl.add_argument("--state", help="comma-separated: pending, leased, held, delivered, failed, cancelled")
    dl.add_argument("--kind", help="comma-separated: original, test, redeliver, replay")
    dl.add_argument("--type", help="comma-separated event types or patterns")
    dl.add_argument("--since", help="created at or after (RFC 3339)")
    dl.add_argument("--until", help="created before (RFC 3339)")
    dl.add_argument("--limit", type=int, default=25)
    dl.add_argument("--cursor")
    dl.set_defaults(func=runner(deliveries_list))
    ds = api(dsub.add_parser("show", help="a delivery with its attempts"))
    ds.add_argument("id")
    ds.set_defaults(func=runner(deliveries_show))
    dr = api(dsub.add_parser("redeliver", help="send a delivery's event again, once, now"))
    dr.add_argument("id")
    dr.set_defaults(func=runner(deliveries_redeliver))

    rp = sub.add_parser("replay", help="replay a webhook's window of events, with a progress bar (API)")
    rp.add_argument("webhook", type=int, help="the webhook id")
    rp.add_argument("--since", required=True, help="start of the window (RFC 3339)")
    rp.add_argument("--until", help="end of the window (default now; at most 14 days after --since)")
    rp.add_argument("--all", action="store_true", help="every event of the window, not only the failed ones")
    rp.add_argument("--type", action="append", help="event type or pattern (repeatable)")
    rp.add_argument("--no-wait", action="store_true", help="start it and return")
    api(rp).set_defaults(func=runner(replay))
    rs = sub.add_parser("replay-status", help="a replay's progress (API)")
    rs.add_argument("id")
    api(rs).set_defaults(func=runner(replay_show))

    types = sub.add_parser("event-types", help="the event type catalogue (API)")
    tsub = sub.add_subparsers(types, "event_types_command")
    tl = api(tsub.add_parser("list", help="every event type"))
    tl.set_defaults(func=runner(event_types_list))
    tc = tsub.add_parser("create", help="add an event type (usable at once)")
    tc.add_argument("name")
    tc.add_argument("--description")
    api(tc).set_defaults(func=runner(event_types_create))
