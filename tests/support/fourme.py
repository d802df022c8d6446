"""The 4me dialect from outside: creating webhooks and webhook policies, emitting events, reading deliveries."""

from __future__ import annotations

from typing import Any

from tests.support.api import Org, ServerClient


class FourMe(ServerClient):
    """Calls to a module's daemon in the 4me dialect, and a look at its database."""

    org_prefix = "fourme"

    async def webhook(self, org: Org, uri: str, **fields: Any) -> dict[str, Any]:
        """POST /webhooks with `event` request.create unless `fields` say otherwise; the created webhook."""
        body = {"event": "request.create", "uri": uri, **fields}
        reply = await self("POST", "/webhooks", token=org.admin, json_body=body)
        assert reply.status == 200, reply
        created: dict[str, Any] = reply.body
        return created

    async def policy(self, org: Org, **fields: Any) -> dict[str, Any]:
        """POST /webhook_policies; the created policy (with its public key or shared key)."""
        reply = await self("POST", "/webhook_policies", token=org.admin, json_body=fields)
        assert reply.status == 200, reply
        created: dict[str, Any] = reply.body
        return created

    async def emit(self, org: Org, type: str = "request.create", payload: Any = None, **fields: Any) -> str:
        """POST /events as the organisation's producer; the event id."""
        body = {"type": type, "payload": payload if payload is not None else {}, **fields}
        reply = await self("POST", "/events", token=org.producer, json_body=body)
        assert reply.status == 201, reply
        event_id: str = reply.body["id"]
        return event_id

    async def state(self, org: Org, webhook_id: int) -> str:
        reply = await self("GET", f"/webhooks/{webhook_id}", token=org.admin)
        assert reply.status == 200, reply
        state: str = reply.body["state"]
        return state

    async def deliveries(self, webhook_id: int, state: str) -> int:
        rows = await self.sql(
            "SELECT count(*) AS n FROM delivery WHERE webhook_id = $1 AND state = $2 AND kind <> 'test'",
            webhook_id,
            state,
        )
        return int(rows[0]["n"])
