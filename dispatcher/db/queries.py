"""One typed method per named query of sql/queries.sql: arguments by name, rows as frozen values.

`Database` runs them on the pool, each in a transaction of its own; `Database.transaction()` yields a
`Transaction` that runs them on one connection inside one transaction. Nothing outside this package names a
query: the names live here, next to the SQL they run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

import asyncpg

from dispatcher.db.core import ConstraintViolation, load_queries
from dispatcher.db.rows import (
    AttemptRow,
    CallerRow,
    ClaimRow,
    DeliveryDetailRow,
    DeliveryLogRow,
    DeliveryRef,
    EventSummaryRow,
    EventTypeRow,
    FailingWebhook,
    MailRow,
    MinuteCount,
    OrganisationRow,
    PausedRow,
    PolicyRow,
    QueueAges,
    RateLimitRow,
    Rates,
    RecordedBatch,
    ReplayRow,
    ReplayStepRow,
    RescuedRow,
    RoutedRow,
    StateChange,
    StateCount,
    TaskRow,
    TokenRow,
    WebhookDetailRow,
    WebhookHourStats,
    WebhookOutcome,
    WebhookRow,
    WebhookStateCount,
)
from dispatcher.vocab import Role, WebhookFormat, WebhookState

_QUERIES = load_queries()


class Queries:
    """The named queries, run by `_fetch` / `_fetchrow` / `_fetchval` / `_execute` of a pool or a connection."""

    def __init__(self, queries: Mapping[str, str]) -> None:
        self._sql = queries
        self.round_trips = 0

    async def _run(self, method: str, name: str, args: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._run("fetch", name, args)
        return rows

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._run("fetchrow", name, args)
        return row

    async def _fetchval(self, name: str, *args: Any) -> Any:
        return await self._run("fetchval", name, args)

    async def _execute(self, name: str, *args: Any) -> None:
        await self._run("execute", name, args)

    # ---- settings and catalogue ------------------------------------------------------------------------

    async def sync_settings(self, *, max_payload_bytes: int, notify: bool) -> None:
        await self._execute("sync_settings", max_payload_bytes, notify)

    async def add_event_types(self, *, names: Sequence[str]) -> None:
        await self._execute("add_event_types", list(names))

    async def event_type_names(self) -> list[str]:
        return [row["name"] for row in await self._fetch("event_type_names")]

    async def try_advisory_lock(self, *, key: int) -> bool:
        """Inside a transaction: take the transaction-scoped advisory lock `key` if no one holds it."""
        return bool(await self._fetchval("try_advisory_lock", key))

    # ---- routing ---------------------------------------------------------------------------------------

    async def route_events(self, *, limit: int, max_attempts: int, event_id: UUID | None = None) -> list[RoutedRow]:
        return [RoutedRow.of(r) for r in await self._fetch("route_events", limit, max_attempts, event_id)]

    async def undispatched_events(self, *, limit: int) -> list[UUID]:
        return [row["id"] for row in await self._fetch("undispatched_events", limit)]

    async def mark_event_unroutable(self, *, event_id: UUID, error: str) -> None:
        await self._execute("mark_event_unroutable", event_id, error)

    # ---- claims and results ----------------------------------------------------------------------------

    async def claim_deliveries(
        self,
        *,
        limit: int,
        per_webhook: int,
        ahead: int,
        lease_seconds: float,
        owner: str,
        schedule: Sequence[float],
        jitter: float,
        test_lease_seconds: float,
        answered: Sequence[UUID],
        stalled: Sequence[int] = (),
    ) -> list[ClaimRow]:
        rows = await self._fetch(
            "claim_deliveries", limit, per_webhook, ahead, lease_seconds, owner, list(schedule), jitter,
            test_lease_seconds, list(answered), list(stalled),
        )  # fmt: skip
        return [ClaimRow.of(r) for r in rows]

    async def record_results(
        self,
        *,
        delivery_ids: Sequence[UUID],
        lease_tokens: Sequence[int],
        states: Sequence[str],
        next_attempt_ats: Sequence[datetime | None],
        statuses: Sequence[int | None],
        error_classes: Sequence[str | None],
        errors: Sequence[str | None],
        started_ats: Sequence[datetime],
        finished_ats: Sequence[datetime],
        durations_ms: Sequence[int],
        responses: Sequence[str | None],
        disable_after_failures: int,
        min_failing_seconds: float,
        limits: Sequence[int | None] | None = None,
        throttled_untils: Sequence[datetime | None] | None = None,
    ) -> RecordedBatch:
        """`limits`: each result's webhook concurrency limit as its owner sees it (0: none; None: not said);
        `throttled_untils`: no claim for the webhook before then (its Retry-After)."""
        rows = await self._fetch(
            "record_results", list(delivery_ids), list(lease_tokens), list(states), list(next_attempt_ats),
            list(statuses), list(error_classes), list(errors), list(started_ats), list(finished_ats),
            list(durations_ms), list(responses), disable_after_failures, min_failing_seconds,
            None if limits is None else list(limits), None if throttled_untils is None else list(throttled_untils),
        )  # fmt: skip
        return RecordedBatch(
            applied=frozenset(row["delivery_id"] for row in rows if row["delivery_id"] is not None),
            webhooks=tuple(
                WebhookOutcome.of({k: v for k, v in row.items() if k != "delivery_id"})
                for row in rows
                if row["webhook_id"] is not None
            ),
        )

    async def release_owner_leases(self, *, owner: str) -> list[UUID]:
        return [row["id"] for row in await self._fetch("release_owner_leases", owner)]

    async def return_leases(self, *, ids: Sequence[UUID], lease_tokens: Sequence[int], due_at: datetime) -> list[UUID]:
        return [row["id"] for row in await self._fetch("return_leases", list(ids), list(lease_tokens), due_at)]

    # ---- health: holding, releasing, probing -----------------------------------------------------------

    async def hold_deliveries(self, *, webhook_ids: Sequence[int]) -> list[UUID]:
        return [row["id"] for row in await self._fetch("hold_deliveries", list(webhook_ids))]

    async def hold_paused_strays(self) -> list[UUID]:
        return [row["id"] for row in await self._fetch("hold_paused_strays")]

    async def cancel_strays(self) -> list[UUID]:
        return [row["id"] for row in await self._fetch("cancel_strays")]

    async def release_held(self) -> list[int]:
        """The webhook of each delivery released (one entry per delivery)."""
        return [row["webhook_id"] for row in await self._fetch("release_held")]

    async def rescue_leases(self) -> list[RescuedRow]:
        return [RescuedRow.of(r) for r in await self._fetch("rescue_leases")]

    async def probe_invalid_webhooks(self, *, interval_seconds: float) -> list[DeliveryRef]:
        return [DeliveryRef.of(r) for r in await self._fetch("probe_invalid_webhooks", interval_seconds)]

    async def fail_overdue_held(self, *, max_hold_seconds: float) -> list[DeliveryRef]:
        return [DeliveryRef.of(r) for r in await self._fetch("fail_overdue_held", max_hold_seconds)]

    # ---- tests and tasks -------------------------------------------------------------------------------

    async def expire_tasks(self) -> list[tuple[UUID, int | None]]:
        """Fail tasks pending for over 60 s; returns each (task id, webhook id)."""
        return [(row["id"], row["webhook_id"]) for row in await self._fetch("expire_tasks")]

    async def request_test(self, *, webhook_id: int, organisation: str) -> TaskRow | None:
        """A new test task, or None when one is already pending (or there is no such webhook)."""
        row = await self._fetchrow("request_test", webhook_id, organisation)
        return TaskRow.of(row) if row is not None else None

    async def pending_test(self, *, webhook_id: int, organisation: str) -> TaskRow | None:
        row = await self._fetchrow("pending_test", webhook_id, organisation)
        return TaskRow.of(row) if row is not None else None

    async def supersede_tests(self, *, webhook_id: int) -> list[UUID]:
        return [row["id"] for row in await self._fetch("supersede_tests", webhook_id)]

    async def get_task(self, *, task_id: UUID, organisation: str) -> TaskRow | None:
        row = await self._fetchrow("get_task", task_id, organisation)
        return TaskRow.of(row) if row is not None else None

    # ---- webhooks --------------------------------------------------------------------------------------

    async def get_webhook(self, *, webhook_id: int, organisation: str | None) -> WebhookRow | None:
        """Webhook `webhook_id` of `organisation` (None: of any), not deleted."""
        row = await self._fetchrow("get_webhook", webhook_id, organisation)
        return WebhookRow.of(row) if row is not None else None

    async def list_webhooks(self, *, organisation: str | None) -> list[WebhookRow]:
        return [WebhookRow.of(r) for r in await self._fetch("list_webhooks", organisation)]

    async def list_webhook_configs(
        self,
        *,
        organisation: str,
        states: Sequence[str] | None,
        created_gt: datetime | None,
        created_gte: datetime | None,
        created_lt: datetime | None,
        created_lte: datetime | None,
        before_id: int | None,
        limit: int,
    ) -> list[WebhookRow]:
        rows = await self._fetch(
            "list_webhook_configs", organisation, None if states is None else list(states),
            created_gt, created_gte, created_lt, created_lte, before_id, limit,
        )  # fmt: skip
        return [WebhookRow.of(r) for r in rows]

    async def set_webhook_url(self, *, webhook_id: int, organisation: str, url: str) -> StateChange | None:
        row = await self._fetchrow("set_webhook_url", webhook_id, organisation, url)
        return StateChange.of(row) if row is not None else None

    async def renew_webhook(self, *, webhook_id: int, organisation: str) -> StateChange | None:
        row = await self._fetchrow("renew_webhook", webhook_id, organisation)
        return StateChange.of(row) if row is not None else None

    async def deactivate_webhook(self, *, webhook_id: int, organisation: str) -> StateChange | None:
        row = await self._fetchrow("deactivate_webhook", webhook_id, organisation)
        return StateChange.of(row) if row is not None else None

    async def set_paused(self, *, webhook_id: int, organisation: str, paused: bool) -> PausedRow | None:
        row = await self._fetchrow("set_paused", webhook_id, organisation, paused)
        return PausedRow.of(row) if row is not None else None

    async def delete_webhook(self, *, webhook_id: int, organisation: str) -> bool:
        """Whether a live webhook was deleted."""
        return await self._fetchrow("delete_webhook", webhook_id, organisation) is not None

    # ---- mail ------------------------------------------------------------------------------------------

    async def queue_failing_mail(self, *, webhook_ids: Sequence[int], at: datetime) -> list[DeliveryRef]:
        return [DeliveryRef.of(r) for r in await self._fetch("queue_failing_mail", list(webhook_ids), at)]

    async def queue_invalid_mail(self, *, webhook_ids: Sequence[int]) -> list[int]:
        """The ids of the mails queued."""
        return [row["id"] for row in await self._fetch("queue_invalid_mail", list(webhook_ids))]

    async def claim_mail(self, *, limit: int, retry_seconds: float) -> list[MailRow]:
        return [MailRow.of(r) for r in await self._fetch("claim_mail", limit, retry_seconds)]

    async def mail_sent(self, *, mail_id: int) -> None:
        await self._execute("mail_sent", mail_id)

    async def mail_failed(self, *, mail_id: int, error: str) -> None:
        await self._execute("mail_failed", mail_id, error)

    # ---- retention -------------------------------------------------------------------------------------

    async def prune_finished_deliveries(self, *, delivered_seconds: float, failed_seconds: float, limit: int) -> int:
        return len(await self._fetch("prune_finished_deliveries", delivered_seconds, failed_seconds, limit))

    async def prune_events(self, *, older_than_seconds: float, limit: int) -> int:
        return len(await self._fetch("prune_events", older_than_seconds, limit))

    async def prune_sent_mail(self, *, older_than_seconds: float, limit: int) -> int:
        return len(await self._fetch("prune_sent_mail", older_than_seconds, limit))

    async def prune_abandoned_mail(self, *, older_than_seconds: float, limit: int) -> int:
        return len(await self._fetch("prune_abandoned_mail", older_than_seconds, limit))

    async def prune_finished_tasks(self, *, older_than_seconds: float, limit: int) -> int:
        return len(await self._fetch("prune_finished_tasks", older_than_seconds, limit))

    async def prune_deleted_webhooks(self, *, older_than_seconds: float, limit: int) -> list[int]:
        return [row["id"] for row in await self._fetch("prune_deleted_webhooks", older_than_seconds, limit)]

    # ---- figures ---------------------------------------------------------------------------------------

    async def queue_status(self) -> list[StateCount]:
        return [StateCount.of(r) for r in await self._fetch("queue_status")]

    async def oldest_pending(self) -> QueueAges:
        row = await self._fetchrow("oldest_pending")
        assert row is not None
        return QueueAges.of(row)

    async def webhook_states(self, *, organisation: str | None = None) -> list[WebhookStateCount]:
        return [WebhookStateCount.of(r) for r in await self._fetch("webhook_states", organisation)]

    async def notification_queue_usage(self) -> float:
        return float(await self._fetchval("notification_queue_usage") or 0.0)

    async def failing_webhooks(self, *, limit: int, organisation: str | None = None) -> list[FailingWebhook]:
        return [FailingWebhook.of(r) for r in await self._fetch("failing_webhooks", limit, organisation)]

    async def recent_rates(self) -> Rates:
        row = await self._fetchrow("recent_rates")
        assert row is not None
        return Rates.of(row)

    # ---- organisations and tokens ----------------------------------------------------------------------

    async def ensure_organisation(self, *, organisation: str) -> bool:
        """Create the organisation if missing; whether it was made now."""
        return await self._fetchval("ensure_organisation", organisation) is not None

    async def create_organisation(self, *, organisation: str, name: str) -> OrganisationRow | None:
        """None when it exists already."""
        row = await self._fetchrow("create_organisation", organisation, name)
        return OrganisationRow.of(row) if row is not None else None

    async def list_organisations(self) -> list[OrganisationRow]:
        return [OrganisationRow.of(r) for r in await self._fetch("list_organisations")]

    async def get_organisation(self, *, organisation: str) -> OrganisationRow | None:
        row = await self._fetchrow("get_organisation", organisation)
        return OrganisationRow.of(row) if row is not None else None

    async def set_default_webhook(self, *, organisation: str, webhook_id: int | None) -> OrganisationRow | None:
        """None when the webhook is not a live webhook of the organisation."""
        row = await self._fetchrow("set_default_webhook", organisation, webhook_id)
        return OrganisationRow.of(row) if row is not None else None

    async def create_token(self, *, organisation: str, role: Role, digest: bytes, name: str) -> int:
        token_id: int = await self._fetchval("create_token", organisation, role, digest, name)
        return token_id

    async def create_token_bound(
        self, *, organisation: str, role: Role, digest: bytes, name: str, webhook_id: int | None
    ) -> TokenRow | None:
        """None when `webhook_id` is not a live webhook of the organisation."""
        row = await self._fetchrow("create_token_bound", organisation, role, digest, name, webhook_id)
        return TokenRow.of(row) if row is not None else None

    async def authenticate(self, *, digest: bytes) -> CallerRow | None:
        row = await self._fetchrow("authenticate", digest)
        return CallerRow.of(row) if row is not None else None

    async def rate_limit_hit(self, *, token_id: int, action: str, limit: int, window_seconds: int) -> RateLimitRow:
        row = await self._fetchrow("rate_limit_hit", token_id, action, limit, window_seconds)
        assert row is not None
        return RateLimitRow.of(row)

    async def get_token(self, *, token_id: int, organisation: str) -> TokenRow | None:
        row = await self._fetchrow("get_token", token_id, organisation)
        return TokenRow.of(row) if row is not None else None

    async def bind_token(self, *, token_id: int, organisation: str, webhook_id: int | None) -> TokenRow | None:
        row = await self._fetchrow("bind_token", token_id, organisation, webhook_id)
        return TokenRow.of(row) if row is not None else None

    async def list_tokens(self, *, organisation: str, before_id: int | None, limit: int) -> list[TokenRow]:
        return [TokenRow.of(r) for r in await self._fetch("list_tokens", organisation, before_id, limit)]

    async def revoke_token(self, *, token_id: int, organisation: str) -> TokenRow | None:
        row = await self._fetchrow("revoke_token", token_id, organisation)
        return TokenRow.of(row) if row is not None else None

    # ---- events ----------------------------------------------------------------------------------------

    async def emit_event(
        self,
        *,
        organisation: str,
        type: str,
        payload: str,
        object_id: str | None,
        actor: str | None,
        key_id: int | None,
        idempotency_key: str | None,
    ) -> UUID:
        """Insert an event through dispatcher_emit; `payload` and `actor` are JSON text. Returns its id."""
        try:
            event_id: UUID = await self._fetchval(
                "emit_event_full", organisation, type, payload, object_id, actor, key_id, idempotency_key
            )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise ConstraintViolation(exc.constraint_name or "constraint", str(exc), exc.hint) from None
        return event_id

    async def list_event_summaries(
        self, *, organisation: str, type: str | None, action: str | None, before_id: UUID | None, limit: int
    ) -> list[EventSummaryRow]:
        rows = await self._fetch("list_event_resources", organisation, type, action, before_id, limit)
        return [EventSummaryRow.of(r) for r in rows]

    async def get_event_summary(self, *, organisation: str, event_id: UUID) -> EventSummaryRow | None:
        row = await self._fetchrow("get_event_resource", organisation, event_id)
        return EventSummaryRow.of(row) if row is not None else None

    # ---- producer logins -------------------------------------------------------------------------------

    async def create_producer_login(
        self, *, login: str, organisation: str, password: str
    ) -> Literal["created", "exists", "no_createrole"]:
        """Create login `login` (member of dispatcher_producer, `password` best a SCRAM verifier) bound to
        `organisation`; 'exists' when a role of that name exists, 'no_createrole' when this user may not."""
        try:
            outcome = await self._fetchval("create_producer_login", login, organisation, password)
        except asyncpg.DuplicateObjectError:  # made by someone else meanwhile
            return "exists"
        except asyncpg.InsufficientPrivilegeError:  # PostgreSQL 16+: CREATEROLE without ADMIN on the group
            return "no_createrole"
        assert outcome in ("created", "exists", "no_createrole"), outcome
        return cast(Literal["created", "exists", "no_createrole"], outcome)

    # ---- 4me: webhooks with every field, webhook policies ----------------------------------------------

    async def create_webhook_full(
        self,
        *,
        organisation: str,
        url: str,
        events: Sequence[str],
        format: WebhookFormat,
        name: str,
        secret: str,
        description: str,
        headers: str,
        rate_limit: float | None,
        mail_exceptions_to: str | None,
        source: str | None,
        source_id: str | None,
        policy_id: int | None,
        state: WebhookState,
        verify: bool,
    ) -> WebhookDetailRow:
        """`headers` is a JSON object's text; `state` is new, or deactivated for a webhook made disabled."""
        row = await self._fetchrow(
            "create_webhook_full", organisation, url, list(events), format, name, secret, description, headers,
            rate_limit, mail_exceptions_to, source, source_id, policy_id, state, verify,
        )  # fmt: skip
        assert row is not None
        return WebhookDetailRow.of(row)

    async def get_webhook_detail(self, *, webhook_id: int, organisation: str) -> WebhookDetailRow | None:
        row = await self._fetchrow("get_webhook_detail", webhook_id, organisation)
        return WebhookDetailRow.of(row) if row is not None else None

    async def count_webhook_details(self, *, organisation: str, disabled: bool | None) -> int:
        return int(await self._fetchval("count_webhook_details", organisation, disabled))

    async def list_webhook_details(
        self, *, organisation: str, disabled: bool | None, limit: int, offset: int
    ) -> list[WebhookDetailRow]:
        rows = await self._fetch("list_webhook_details", organisation, disabled, limit, offset)
        return [WebhookDetailRow.of(r) for r in rows]

    async def update_webhook_fields(
        self,
        *,
        webhook_id: int,
        organisation: str,
        fields: Sequence[str],
        name: str | None = None,
        description: str | None = None,
        events: Sequence[str] | None = None,
        format: WebhookFormat | None = None,
        headers: str | None = None,
        rate_limit: float | None = None,
        mail_exceptions_to: str | None = None,
        source: str | None = None,
        source_id: str | None = None,
        policy_id: int | None = None,
        verify: bool | None = None,
    ) -> WebhookDetailRow | None:
        """Set the fields named in `fields` (others keep their value); None when there is no such webhook."""
        row = await self._fetchrow(
            "update_webhook_fields", webhook_id, organisation, name, description,
            None if events is None else list(events), format, headers, rate_limit, mail_exceptions_to, source,
            source_id, policy_id, list(fields), verify,
        )  # fmt: skip
        return WebhookDetailRow.of(row) if row is not None else None

    async def start_verification(
        self,
        *,
        webhook_id: int,
        organisation: str,
        code_digest: bytes,
        expires_at: datetime,
        payload: str,
        force: bool = False,
    ) -> UUID | None:
        """The webhook.verify event queued, or None when the webhook does not ask for verification."""
        event_id: UUID | None = await self._fetchval(
            "start_verification", webhook_id, organisation, code_digest, expires_at, payload, force
        )
        return event_id

    async def confirm_verification(self, *, webhook_id: int, code_digest: bytes) -> str | None:
        """The webhook's organisation when the code was right (and is now used up), else None."""
        organisation: str | None = await self._fetchval("confirm_verification", webhook_id, code_digest)
        return organisation

    async def create_policy(
        self,
        *,
        organisation: str,
        name: str,
        disabled: bool,
        jwt_alg: str,
        jwt_audience: str | None,
        jwt_claim_expires_in: int | None,
        signing_key: str,
    ) -> PolicyRow:
        row = await self._fetchrow(
            "create_policy", organisation, name, disabled, jwt_alg, jwt_audience, jwt_claim_expires_in, signing_key
        )
        assert row is not None
        return PolicyRow.of(row)

    async def get_policy(self, *, policy_id: int, organisation: str) -> PolicyRow | None:
        row = await self._fetchrow("get_policy", policy_id, organisation)
        return PolicyRow.of(row) if row is not None else None

    async def count_policies(self, *, organisation: str, disabled: bool | None) -> int:
        return int(await self._fetchval("count_policies", organisation, disabled))

    async def list_policies(
        self, *, organisation: str, disabled: bool | None, limit: int, offset: int
    ) -> list[PolicyRow]:
        return [PolicyRow.of(r) for r in await self._fetch("list_policies", organisation, disabled, limit, offset)]

    async def update_policy(
        self,
        *,
        policy_id: int,
        organisation: str,
        fields: Sequence[str],
        name: str | None = None,
        disabled: bool | None = None,
        jwt_audience: str | None = None,
        jwt_claim_expires_in: int | None = None,
    ) -> PolicyRow | None:
        """Set the fields named in `fields`; disabling holds the pending deliveries of its webhooks."""
        row = await self._fetchrow(
            "update_policy", policy_id, organisation, name, disabled, jwt_audience, jwt_claim_expires_in, list(fields)
        )
        return PolicyRow.of(row) if row is not None else None

    # ---- recovery: the delivery log, redeliver, replay, rotation, event types, organisation settings ----

    async def list_webhook_deliveries(
        self,
        *,
        organisation: str,
        webhook_id: int,
        states: Sequence[str] | None,
        kinds: Sequence[str] | None,
        types: Sequence[str] | None,
        since: datetime | None,
        until: datetime | None,
        before_id: UUID | None,
        limit: int,
    ) -> list[DeliveryLogRow]:
        rows = await self._fetch(
            "list_webhook_deliveries", organisation, webhook_id, _list(states), _list(kinds), _list(types),
            since, until, before_id, limit,
        )  # fmt: skip
        return [DeliveryLogRow.of(r) for r in rows]

    async def list_event_deliveries(
        self,
        *,
        organisation: str,
        event_id: UUID,
        states: Sequence[str] | None,
        kinds: Sequence[str] | None,
        types: Sequence[str] | None,
        since: datetime | None,
        until: datetime | None,
        before_id: UUID | None,
        limit: int,
    ) -> list[DeliveryLogRow]:
        rows = await self._fetch(
            "list_event_deliveries", organisation, event_id, _list(states), _list(kinds), _list(types),
            since, until, before_id, limit,
        )  # fmt: skip
        return [DeliveryLogRow.of(r) for r in rows]

    async def get_delivery(self, *, organisation: str, delivery_id: UUID) -> DeliveryDetailRow | None:
        row = await self._fetchrow("get_delivery", organisation, delivery_id)
        return DeliveryDetailRow.of(row) if row is not None else None

    async def delivery_attempts(self, *, delivery_id: UUID) -> list[AttemptRow]:
        return [AttemptRow.of(r) for r in await self._fetch("delivery_attempts", delivery_id)]

    async def redeliver(self, *, organisation: str, delivery_id: UUID) -> DeliveryLogRow | None:
        """None when there is no such delivery or its webhook is deleted or deactivated."""
        row = await self._fetchrow("redeliver", organisation, delivery_id)
        return DeliveryLogRow.of(row) if row is not None else None

    async def count_replay_events(
        self,
        *,
        webhook_id: int,
        since: datetime,
        until: datetime,
        only_failed: bool,
        types: Sequence[str] | None,
        at_most: int,
    ) -> int:
        count: int = await self._fetchval(
            "count_replay_events", webhook_id, since, until, only_failed, _list(types), at_most
        )
        return count

    async def create_replay(
        self,
        *,
        organisation: str,
        webhook_id: int,
        since: datetime,
        until: datetime,
        only_failed: bool,
        types: Sequence[str] | None,
        max_events: int,
    ) -> UUID | None:
        """The new replay's id; None when one is running for the webhook (or there is no such webhook)."""
        replay_id: UUID | None = await self._fetchval(
            "create_replay", organisation, webhook_id, since, until, only_failed, _list(types), max_events
        )
        return replay_id

    async def running_replay(self, *, organisation: str, webhook_id: int) -> ReplayRow | None:
        row = await self._fetchrow("running_replay", organisation, webhook_id)
        return ReplayRow.of(row) if row is not None else None

    async def get_replay(self, *, organisation: str, replay_id: UUID) -> ReplayRow | None:
        row = await self._fetchrow("get_replay", organisation, replay_id)
        return ReplayRow.of(row) if row is not None else None

    async def list_replays(
        self, *, organisation: str, webhook_id: int, before_id: UUID | None, limit: int
    ) -> list[ReplayRow]:
        return [ReplayRow.of(r) for r in await self._fetch("list_replays", organisation, webhook_id, before_id, limit)]

    async def replay_step(self, *, batch: int, max_attempts: int) -> ReplayStepRow | None:
        """One batch of the oldest running replay still walking its window (None: no such replay)."""
        row = await self._fetchrow("replay_step", batch, max_attempts)
        return ReplayStepRow.of(row) if row is not None else None

    async def finish_replays(self) -> list[DeliveryRef]:
        """The replays completed now (id, webhook)."""
        return [DeliveryRef.of(r) for r in await self._fetch("finish_replays")]

    async def rotate_secret(
        self, *, webhook_id: int, organisation: str, secret: str, overlap_seconds: float
    ) -> datetime | None:
        """When the secrets rotated out stop signing; None when there is no such webhook."""
        row = await self._fetchrow("rotate_secret", webhook_id, organisation, secret, overlap_seconds)
        return row["previous_expires_at"] if row is not None else None

    async def prune_expired_secrets(self) -> list[int]:
        """The webhooks whose expired secrets were dropped."""
        return [row["id"] for row in await self._fetch("prune_expired_secrets")]

    # ---- secrets at rest -------------------------------------------------------------------------------

    async def secrets_webhooks_to_reseal(self, *, header: str, after: int, limit: int) -> list[tuple[int, str]]:
        """In a transaction: (id, secrets JSON text) of up to `limit` webhooks after `after` with a secret whose
        stored value does not start with `header`, locked."""
        rows = await self._fetch("secrets_webhooks_to_reseal", header, after, limit)
        return [(row["id"], row["secrets"]) for row in rows]

    async def secrets_set_webhooks(self, *, ids: Sequence[int], secrets: Sequence[str]) -> None:
        """Store each webhook's re-sealed secrets (JSON texts), by id."""
        if ids:
            await self._execute("secrets_set_webhooks", list(ids), list(secrets))

    async def secrets_policies_to_reseal(self, *, header: str, after: int, limit: int) -> list[tuple[int, str]]:
        """In a transaction: (id, signing_key) of up to `limit` policies after `after` whose key does not start
        with `header`, locked."""
        rows = await self._fetch("secrets_policies_to_reseal", header, after, limit)
        return [(row["id"], row["signing_key"]) for row in rows]

    async def secrets_set_policy_keys(self, *, ids: Sequence[int], signing_keys: Sequence[str]) -> None:
        """Store each policy's re-sealed key, by id."""
        if ids:
            await self._execute("secrets_set_policy_keys", list(ids), list(signing_keys))

    async def list_event_types(self, *, after: str | None, limit: int) -> list[EventTypeRow]:
        return [EventTypeRow.of(r) for r in await self._fetch("list_event_types", after, limit)]

    async def create_event_type(self, *, name: str, description: str) -> EventTypeRow | None:
        """None when the type exists."""
        row = await self._fetchrow("create_event_type", name, description)
        return EventTypeRow.of(row) if row is not None else None

    async def set_organisation_settings(
        self, *, organisation: str, name: str | None, contact_emails: Sequence[str] | None
    ) -> OrganisationRow | None:
        row = await self._fetchrow("set_organisation_settings", organisation, name, _list(contact_emails))
        return OrganisationRow.of(row) if row is not None else None

    # ---- the console's figures (one organisation) ------------------------------------------------------

    async def organisation_queue_status(self, *, organisation: str) -> list[StateCount]:
        return [StateCount.of(r) for r in await self._fetch("organisation_queue_status", organisation)]

    async def organisation_queue_ages(self, *, organisation: str) -> QueueAges:
        row = await self._fetchrow("organisation_queue_ages", organisation)
        assert row is not None
        return QueueAges.of(row)

    async def organisation_rates(self, *, organisation: str) -> Rates:
        row = await self._fetchrow("organisation_rates", organisation)
        assert row is not None
        return Rates.of(row)

    async def webhook_hour_stats(self, *, organisation: str, webhook_id: int | None = None) -> list[WebhookHourStats]:
        """The last hour's attempts of each of the organisation's webhooks that had any (only `webhook_id`'s if
        given)."""
        rows = await self._fetch("webhook_hour_stats", organisation, webhook_id)
        return [WebhookHourStats.of(r) for r in rows]

    async def webhook_minutes(self, *, webhook_id: int, organisation: str) -> list[MinuteCount]:
        """The last day's attempts to the webhook per minute, oldest first (empty minutes left out)."""
        return [MinuteCount.of(r) for r in await self._fetch("webhook_minutes", webhook_id, organisation)]


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


class Transaction(Queries):
    """The named queries on one connection, inside the transaction `Database.transaction()` opened."""

    def __init__(self, conn: asyncpg.Connection, queries: Mapping[str, str], owner: Database) -> None:
        super().__init__(queries)
        self._conn = conn
        self._owner = owner

    async def _run(self, method: str, name: str, args: tuple[Any, ...]) -> Any:
        self._owner.round_trips += 1
        return await getattr(self._conn, method)(self._sql[name], *args)


class Database(Queries):
    """The pool and the named queries, counting round trips for the benchmark and `status`."""

    def __init__(self, pool: asyncpg.Pool, queries: Mapping[str, str] | None = None) -> None:
        super().__init__(queries if queries is not None else _QUERIES)
        self._pool = pool

    async def _run(self, method: str, name: str, args: tuple[Any, ...]) -> Any:
        self.round_trips += 1
        return await getattr(self._pool, method)(self._sql[name], *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Several named queries in one transaction on one connection (committed unless the block raises)."""
        async with self._pool.acquire() as conn, conn.transaction():
            self.round_trips += 2  # BEGIN and COMMIT
            yield Transaction(conn, self._sql, self)

    async def check_schema_version(self, timeout: float) -> int | None:
        """The newest migration applied (None on an empty database), within `timeout` seconds (/readyz)."""
        from dispatcher.db.core import schema_version

        async with self._pool.acquire(timeout=timeout) as conn:
            return await schema_version(conn)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()
