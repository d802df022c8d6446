"""`dispatcher receiver`: a sample receiver that verifies signatures, prints each event, and answers 400 when a
request does not verify. Also a model for writing your own: see `handle`.

With secrets it checks the Standard Webhooks headers (and `Ricloud-Signature` when present); with a webhook
policy's key (the public key PEM, or an hs256 shared key) it checks JWT bodies `{"jwt": ...}` as 4me's receivers
do, with the issuer and audience when given, and prints the token's `data` claim as the event.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from aiohttp import web

from dispatcher import signing


def make_app(
    secrets: Sequence[str],
    *,
    out: TextIO = sys.stdout,
    tolerance: int = 300,
    jwt_key: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> web.Application:
    """An app that accepts POSTs on any path from dispatcher (any format) signed with one of `secrets` and, with
    `jwt_key`, whose JWT bodies verify with it."""
    secret_list = list(secrets)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        now = int(time.time())
        event: Any = None
        check = "standard"  # which check is running: said when it fails
        try:
            if secret_list:
                # Every request carries Standard Webhooks headers; ricloud-format ones also Ricloud-Signature.
                signing.verify_standard(secret_list, request.headers, body, now=now, tolerance=tolerance)
                if "Ricloud-Signature" in request.headers:
                    check = "ricloud"
                    signing.verify_ricloud(
                        secret_list, request.headers["Ricloud-Signature"], body, now=now, tolerance=tolerance
                    )
            if jwt_key is not None:
                check = "jwt"
                claims = signing.verify_jwt(body, jwt_key, issuer=issuer, audience=audience, now=now)
                event = claims["data"]
        except signing.SignatureError as exc:
            error = f"{_CHECKS[check]}: {exc}"
            print(json.dumps({"verified": False, "path": request.path, "check": check, "error": error}), file=out,
                  flush=True)  # fmt: skip
            return web.json_response({"error": error}, status=400)
        if event is None:
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


# What each check verifies, as a failed one is reported.
_CHECKS = {
    "standard": "Standard Webhooks signature (webhook-signature) did not verify",
    "ricloud": "Ricloud-Signature did not verify",
    "jwt": "JWT body did not verify",
}


def serve(
    listen: str,
    secrets: Sequence[str],
    *,
    jwt_key: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> None:
    """Run the receiver until interrupted."""
    host, _, port = listen.rpartition(":")
    for secret in secrets:
        if not secret.startswith(signing.SECRET_PREFIX):
            print(f"warning: a secret does not start with {signing.SECRET_PREFIX}: webhook secrets do (copy it whole"
                  " from `webhook create`)", file=sys.stderr)  # fmt: skip
    what = f"{len(secrets)} secret(s)" + (" and a JWT key" if jwt_key else "")
    print(f"listening on http://{listen}/ with {what}; Ctrl-C to stop", file=sys.stderr)
    app = make_app(secrets, jwt_key=jwt_key, issuer=issuer, audience=audience)
    web.run_app(app, host=host or "127.0.0.1", port=int(port), print=None, access_log=None)
