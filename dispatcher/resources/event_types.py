"""The event type catalogue: list it, add a type. The catalogue is a table (a foreign key of events), so a new
type is usable at once by producers and by routing in every process."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatcher.db.rows import EventTypeRow
from dispatcher.resources.errors import Invalid, Rejected
from dispatcher.resources.scope import Context, Scope

# The grammar of SPEC §4 (and of the event_type_name_format constraint).
NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
MAX_NAME = 100
MAX_DESCRIPTION = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """Some event types by name, and the cursor of the next page (None: the last page)."""

    items: tuple[EventTypeRow, ...]
    next_cursor: str | None


async def list_page(ctx: Context, scope: Scope, *, cursor: str | None = None, limit: int = 25) -> Page:
    """By name; `cursor` is the last name of the page before."""
    rows = await ctx.db.list_event_types(after=cursor, limit=limit + 1)
    items = tuple(rows[:limit])
    return Page(items, items[-1].name if len(rows) > limit else None)


async def create(ctx: Context, scope: Scope, *, name: str, description: str = "") -> EventTypeRow:
    """A new type in the catalogue (shared by every organisation)."""
    if len(name) > MAX_NAME or not NAME.match(name):
        raise Invalid(
            "name",
            "name must be dot-separated segments of a-z, 0-9, _ and -, the first starting with a letter, "
            f"at most {MAX_NAME} characters (e.g. customer.subscription.created)",
        )
    if len(description) > MAX_DESCRIPTION:
        raise Invalid("description", f"description is longer than {MAX_DESCRIPTION} characters")
    row = await ctx.db.create_event_type(name=name, description=description)
    if row is None:
        raise Rejected("event_type_exists", f"event type {name} is already in the catalogue", field="name")
    return row
