"""`dispatcher receiver`: a sample receiver that verifies signatures, prints each event, and answers 400 when a
request does not verify. Also a model for writing your own: see `handle`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from aiohttp import web

from dispatcher import signing


def make_app(secrets: Sequence[str], *, out: TextIO = sys.stdout, tolerance: int = 300) -> web.Application:
    """An app that accepts POSTs on any path from dispatcher (any format) signed with one of `secrets`."""
    secret_list = list(secrets)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        now = int(time.time())
        try:
            # Every request carries Standard Webhooks headers; ricloud-format ones also Ricloud-Signature.
            signing.verify_standard(secret_list, request.headers, body, now=now, tolerance=tolerance)
            if "Ricloud-Signature" in request.headers:
                signing.verify_ricloud(
                    secret_list, request.headers["Ricloud-Signature"], body, now=now, tolerance=tolerance
                )
        except signing.SignatureError as exc:
            print(json.dumps({"verified": False, "path": request.path, "error": str(exc)}), file=out, flush=True)
            return web.json_response({"error": str(exc)}, status=400)
        try:
            event = json.loads(body)
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        record = {
            "verified": True,
            "path": request.path,
            "webhook-id": request.headers.get("webhook-id"),
            "event": event,
        }
        print(json.dumps(record), file=out, flush=True)
        return web.json_response({"received": True})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    return app


def serve(listen: str, secrets: Sequence[str]) -> None:
    """Run the receiver until interrupted."""
    host, _, port = listen.rpartition(":")
    print(f"listening on http://{listen}/ with {len(secrets)} secret(s); Ctrl-C to stop", file=sys.stderr)
    web.run_app(make_app(secrets), host=host or "127.0.0.1", port=int(port), print=None, access_log=None)
