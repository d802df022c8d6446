"""Organisations: read one, set its default webhook (ricloud's default webhook config), make one."""

from __future__ import annotations

from dispatcher.db.rows import OrganisationRow
from dispatcher.resources.errors import Invalid, NotFound
from dispatcher.resources.scope import Context, Scope


async def get(ctx: Context, scope: Scope) -> OrganisationRow:
    row = await ctx.db.get_organisation(organisation=scope.organisation)
    if row is None:
        raise NotFound("organisation")
    return row


async def set_default_webhook(ctx: Context, scope: Scope, webhook_id: int | None, field: str) -> OrganisationRow:
    """Events of the organisation that no pattern and no key binding routes go to this webhook (None: none)."""
    row = await ctx.db.set_default_webhook(organisation=scope.organisation, webhook_id=webhook_id)
    if row is None:
        raise Invalid(field, f"no webhook config {webhook_id} in this organisation")
    return row


async def ensure(ctx: Context, organisation: str) -> bool:
    """Make the organisation if it does not exist; whether it was made now."""
    return await ctx.db.ensure_organisation(organisation=organisation)
