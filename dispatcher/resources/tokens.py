"""Tokens (ricloud's keys): create (shown once), list, revoke, the caller's own, bind to a webhook."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.db.rows import TokenRow
from dispatcher.resources.errors import Invalid, NotFound
from dispatcher.resources.scope import Context, Scope
from dispatcher.tokens import new_token
from dispatcher.vocab import Role


@dataclass(frozen=True, slots=True)
class CreatedToken:
    """A new token's record and its secret, shown this once."""

    token: TokenRow
    secret: str


@dataclass(frozen=True, slots=True)
class Page:
    """Some tokens, newest first, and the cursor of the next page (None: the last page)."""

    items: tuple[TokenRow, ...]
    next_cursor: int | None


def check_role(value: object, field: str = "role") -> Role:
    """One of the roles."""
    for role in Role:
        if value == role:
            return role
    raise Invalid(field, f"{field} must be admin, producer or viewer")


async def create(
    ctx: Context, scope: Scope, *, role: Role, name: str = "", webhook_id: int | None = None
) -> CreatedToken:
    """A token of the caller's organisation, optionally bound to one of its webhooks."""
    secret, digest = new_token()
    row = await ctx.db.create_token_bound(
        organisation=scope.organisation, role=role, digest=digest, name=name, webhook_id=webhook_id
    )
    if row is None:
        raise Invalid("webhook_id", f"no webhook {webhook_id} in this organisation")
    return CreatedToken(row, secret)


async def create_with_organisation(ctx: Context, organisation: str, *, role: Role, name: str = "") -> CreatedToken:
    """The CLI's `token create`: the organisation is made if missing."""
    await ctx.db.ensure_organisation(organisation=organisation)
    return await create(ctx, Scope(organisation, Role.ADMIN), role=role, name=name)


async def list_page(ctx: Context, scope: Scope, *, cursor: int | None = None, limit: int = 25) -> Page:
    """Newest first; `cursor` is the last id of the page before."""
    rows = await ctx.db.list_tokens(organisation=scope.organisation, before_id=cursor, limit=limit + 1)
    page = tuple(rows[:limit])
    return Page(page, page[-1].id if len(rows) > limit else None)


async def revoke(ctx: Context, scope: Scope, token_id: int) -> TokenRow:
    row = await ctx.db.revoke_token(token_id=token_id, organisation=scope.organisation)
    if row is None:
        raise NotFound("token")
    return row


async def current(ctx: Context, scope: Scope) -> TokenRow:
    """The calling token."""
    assert scope.token_id is not None
    row = await ctx.db.get_token(token_id=scope.token_id, organisation=scope.organisation)
    if row is None:
        raise NotFound("key")
    return row


async def bind(ctx: Context, scope: Scope, token_id: int, webhook_id: int | None, field: str) -> TokenRow:
    """Bind a token to a webhook of its organisation (None: unbind); events it emits go there."""
    row = await ctx.db.bind_token(token_id=token_id, organisation=scope.organisation, webhook_id=webhook_id)
    if row is None:
        if await ctx.db.get_token(token_id=token_id, organisation=scope.organisation) is None:
            raise NotFound("key")
        raise Invalid(field, f"no webhook config {webhook_id} in this organisation")
    return row
