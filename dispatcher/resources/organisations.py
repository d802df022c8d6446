"""Organisations: read one, set its default webhook (ricloud's default webhook config), make one."""

from __future__ import annotations

import re
from collections.abc import Sequence

from dispatcher.db.rows import OrganisationRow
from dispatcher.resources.errors import Conflict, Invalid, NotFound
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


async def set_settings(
    ctx: Context, scope: Scope, *, name: str | None = None, contact_emails: Sequence[str] | None = None
) -> OrganisationRow:
    """The organisation's name and the recipients of failure mail for webhooks without mail_exceptions_to
    (None: unchanged)."""
    if name is not None and (not name.strip() or len(name) > 200):
        raise Invalid("name", "name must be 1 to 200 characters")
    if contact_emails is not None:
        for address in contact_emails:
            local, at, domain = address.partition("@")
            if not at or not local or "." not in domain or any(c.isspace() for c in address) or len(address) > 254:
                raise Invalid("contact_emails", f"{address!r} is not a mail address")
        contact_emails = list(dict.fromkeys(contact_emails))
    row = await ctx.db.set_organisation_settings(
        organisation=scope.organisation, name=name, contact_emails=contact_emails
    )
    if row is None:
        raise NotFound("organisation")
    return row


async def ensure(ctx: Context, organisation: str) -> bool:
    """Make the organisation if it does not exist; whether it was made now."""
    return await ctx.db.ensure_organisation(organisation=organisation)


# What the database accepts as an organisation id (organisation_id_format).
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class UnknownOrganisation(NotFound):
    """No such organisation."""

    def __init__(self, organisation: str) -> None:
        super().__init__("organisation")
        self.message = (
            f"no organisation {organisation!r}; create it first: dispatcher org create {organisation}"
            " (or dispatcher token create --organisation ... makes it with its first token)"
        )
        self.args = (self.message,)


async def create(ctx: Context, organisation: str, name: str = "") -> OrganisationRow:
    """A new organisation (`dispatcher org create`); its id is lower-case letters, digits, - and _."""
    if not _ID.match(organisation):
        raise Invalid("id", f"{organisation!r} is not an organisation id: lower-case letters, digits, - and _")
    row = await ctx.db.create_organisation(organisation=organisation, name=name or organisation)
    if row is None:
        raise Conflict(f"organisation {organisation!r} exists already", field="id")
    return row


async def list_all(ctx: Context) -> list[OrganisationRow]:
    return await ctx.db.list_organisations()


async def require(ctx: Context, organisation: str) -> None:
    """Refuse an organisation that does not exist, naming it and how to create it (the CLI's commands must
    not make one by a typo)."""
    if await ctx.db.get_organisation(organisation=organisation) is None:
        raise UnknownOrganisation(organisation)
