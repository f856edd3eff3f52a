"""The notification outbox: enqueue in the caller's transaction, deliver after commit.

Enqueue
-------
``notification_enqueue`` writes a ``pending`` row inside the caller's transaction (so a
warning exists exactly when the decision that caused it was committed) and schedules
delivery with ``transaction.on_commit``. A ``dedupe_key`` makes enqueueing idempotent: the
unique index refuses a second row and the first one is returned, also when two
transactions race for the same key.

Deliver (one attempt)
---------------------
Like the remote-command dispatcher, a worker claims before it does any I/O:

1. **Claim** (one short transaction): lock the row with ``SELECT ... FOR UPDATE SKIP
   LOCKED``; leave it alone if another transaction holds it, if it is final, if it is not
   due yet, or if another worker's claim (``sending`` with a live lease) holds it.
   Otherwise count the attempt and set ``status = sending``, ``lease_until = now + lease``.
   That lease time is the claim's token. The claim commits, so the lock is gone.
2. **Send** with no lock and no transaction open (CONVENTIONS §6): the channel's sender.
3. **Record** (one short transaction): lock the row again; only if it is still ``sending``
   with this worker's token, mark it ``sent`` (or schedule the next try with a backoff, or
   ``failed`` after the last allowed attempt). A worker that lost its claim writes nothing.

Two workers can therefore never both send one notification while a claim is live. If a
worker dies between claim and record, the lease runs out and the sweep hands the
notification to another worker, which sends again: delivery is *at least once*. For the
messages this outbox carries (warnings before a trip, receipts) a rare duplicate is better
than a silently lost one; the lease (``NOTIFICATION_LEASE_SECONDS``) must outlast a
sender's own timeout so that a slow send is not mistaken for a dead worker.

``next_attempt_at`` always says when somebody should look at an undelivered notification
again (now for a new one, after the backoff for a retry, at the end of the lease while
``sending``); ``notifications_requeue_due`` (the beat sweep) re-queues those overdue by
more than a grace period, which covers lost tasks and dead workers alike.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from functools import partial

import structlog
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from core.exceptions import NotFound, ValidationError
from core.models import (
    FINAL_NOTIFICATION_STATUSES,
    Notification,
    NotificationChannel,
    NotificationStatus,
    NotificationTopic,
)
from core.notifications import SendError, sender_for

logger = structlog.get_logger(__name__)

DEFAULT_BACKOFF_SECONDS = (30, 120, 600, 1800)
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_LEASE_SECONDS = 120
# The sweep leaves alone what became due this recently: its task is most likely queued.
SWEEP_GRACE = timedelta(minutes=2)
SWEEP_BATCH = 1000
ERROR_LENGTH = 1000


# --- settings ---------------------------------------------------------------------------


def max_attempts() -> int:
    return int(getattr(settings, "NOTIFICATION_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))


def backoff_seconds(attempt: int) -> int:
    """The wait after failed attempt ``attempt`` (1-based); the last step repeats."""
    steps = list(getattr(settings, "NOTIFICATION_BACKOFF_SECONDS", None) or DEFAULT_BACKOFF_SECONDS)
    return int(steps[min(max(attempt, 1), len(steps)) - 1])


def _lease() -> timedelta:
    return timedelta(seconds=float(getattr(settings, "NOTIFICATION_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)))


# --- enqueue ----------------------------------------------------------------------------


def _normalize_recipient(channel: str, recipient: str, customer_id: int | None) -> str:
    """Check the recipient fits the channel; return it in canonical form (E.164 for SMS)."""
    import phonenumbers

    recipient = (recipient or "").strip()
    if channel == NotificationChannel.SMS:
        if not recipient:
            raise ValidationError(
                _("An SMS needs a mobile phone number."), field_errors={"recipient": [_("Required.")]}
            )
        try:
            parsed = phonenumbers.parse(recipient, "CN")
        except phonenumbers.NumberParseException:
            parsed = None
        if (
            parsed is None
            or not phonenumbers.is_valid_number(parsed)
            or phonenumbers.number_type(parsed)
            not in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
        ):
            message = _("“%(v)s” is not a mobile phone number; an SMS needs one.") % {"v": recipient}
            raise ValidationError(message, field_errors={"recipient": [message]}, code="recipient_invalid")
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if channel == NotificationChannel.EMAIL:
        try:
            validate_email(recipient)
        except DjangoValidationError:
            message = _("“%(v)s” is not an e-mail address.") % {"v": recipient}
            raise ValidationError(
                message, field_errors={"recipient": [message]}, code="recipient_invalid"
            ) from None
        return recipient
    if channel == NotificationChannel.PORTAL:
        if customer_id is None:
            raise ValidationError(
                _("A portal message needs the customer it is for."),
                field_errors={"customer_id": [_("Required.")]},
            )
        return recipient
    raise ValidationError(
        _("Unknown notification channel “%(v)s”.") % {"v": channel}, field_errors={"channel": [_("Invalid.")]}
    )


def customer_channels(
    *, mobile_phone: str, email: str, by_sms: bool = True, by_email: bool = True
) -> list[tuple[str, str]]:
    """Where a notice to a customer goes, as ``(channel, recipient)`` pairs: the portal always,
    SMS and e-mail as the customer chose (``Customer.notify_by_sms`` / ``notify_by_email``)
    and only where there is a number or address to send to."""
    channels = [(NotificationChannel.PORTAL.value, "")]
    if by_sms and mobile_phone:
        channels.append((NotificationChannel.SMS.value, mobile_phone))
    if by_email and email:
        channels.append((NotificationChannel.EMAIL.value, email))
    return channels


def notification_enqueue(
    *,
    channel: str,
    topic: str,
    body: str,
    recipient: str = "",
    subject: str = "",
    customer_id: int | None = None,
    account_id: int | None = None,
    dedupe_key: str | None = None,
) -> Notification:
    """Record a notification to send once the caller's transaction commits.

    Idempotent on ``dedupe_key``: if a notification with that key exists (committed, or
    committed by a racing transaction meanwhile), it is returned unchanged and nothing new is
    queued. ValidationError for a recipient that does not fit the channel or an empty body.
    """
    recipient = _normalize_recipient(channel, recipient, customer_id)
    body = (body or "").strip()
    if not body:
        raise ValidationError(_("A notification needs a text."), field_errors={"body": [_("Required.")]})
    topic = topic or NotificationTopic.OTHER
    if len(topic) > 32:
        raise ValidationError(_("The topic code is too long."), field_errors={"topic": [_("Invalid.")]})
    dedupe_key = dedupe_key or None
    if dedupe_key is not None:
        existing = Notification.objects.filter(dedupe_key=dedupe_key).first()
        if existing is not None:
            return existing
    now = timezone.now()
    try:
        # A savepoint, so a lost race for the dedupe key leaves the caller's transaction usable.
        with transaction.atomic():
            notification = Notification.objects.create(
                channel=channel,
                topic=topic,
                recipient=recipient,
                subject=subject[:200],
                body=body,
                customer_id=customer_id,
                account_id=account_id,
                dedupe_key=dedupe_key,
                next_attempt_at=now,
            )
    except IntegrityError:
        if dedupe_key is None:
            raise
        existing = Notification.objects.filter(dedupe_key=dedupe_key).first()
        if existing is None:  # the conflict was something else
            raise
        return existing
    transaction.on_commit(partial(_schedule_delivery, notification.pk), robust=True)
    logger.info(
        "notification_enqueued",
        notification=notification.pk,
        channel=channel,
        topic=topic,
        customer=customer_id,
        account=account_id,
    )
    return notification


def notifications_enqueue_many(items: list[dict], *, dispatch: str = "task") -> int:
    """Record many notifications at once (``notification_enqueue``'s keyword arguments, one
    dict each) to send once the caller's transaction commits. Returns how many were new.

    The same checks as ``notification_enqueue`` (a ValidationError for any item refuses the
    whole call) and the same idempotency on ``dedupe_key``: a key already stored, or repeated
    in ``items``, queues nothing new. On PostgreSQL one INSERT (``ON CONFLICT DO NOTHING``
    skips a stored key, also one a racing transaction inserts meanwhile); on SQLite one query
    for the stored keys and one bulk insert.

    After commit, ``dispatch`` decides how delivery is queued:

    - ``"task"``: one delivery task for all of them (``notifications_deliver_many_task``);
    - ``"batched"``: the ids are appended to a Redis list (one RPUSH) that the beat task
      ``core.notifications_flush`` turns into delivery tasks every couple of seconds
      (``notifications_flush``), for callers on a hot path (payment receipts) where a task
      per call costs more than the call. Without ``REDIS_URL`` (embedded mode) it is
      ``"task"``.

    Every row is due at once (``next_attempt_at = now``), so if the task or the push is lost
    (a crash between commit and queueing) the sweep (``notifications_requeue_due``) delivers
    them."""
    _check_dispatch(dispatch)
    if not items:
        return 0
    rows = notification_rows(items)
    postgres = transaction.get_connection().vendor == "postgresql"
    keys = {row[7] for row in rows if row[7] is not None}
    # PostgreSQL: ``ON CONFLICT DO NOTHING RETURNING id`` skips the stored keys itself, so
    # there is no query for them; SQLite (embedded mode) filters them first.
    stored = (
        set(Notification.objects.filter(dedupe_key__in=keys).values_list("dedupe_key", flat=True))
        if keys and not postgres
        else set()
    )
    fresh, seen = [], set()
    for row in rows:
        key = row[7]
        if key is not None:
            if key in stored or key in seen:
                continue
            seen.add(key)
        fresh.append(row)
    if not fresh:
        return 0
    now = timezone.now()
    ids = _insert_postgres(fresh, now) if postgres else _insert_portable(fresh, now)
    notifications_dispatch(ids, dispatch=dispatch)
    logger.info("notifications_enqueued", count=len(ids), skipped=len(items) - len(ids))
    return len(ids)


def _check_dispatch(dispatch: str) -> None:
    if dispatch not in ("task", "batched"):
        raise ValueError(f"unknown dispatch {dispatch!r}")


def notification_rows(items: list[dict]) -> list[tuple]:
    """``items`` (``notification_enqueue``'s keyword arguments, one dict each) checked and
    normalised into rows for ``notifications_insert_sql``; a ValidationError for the first
    item that is refused (nothing is written here)."""
    rows = []
    for item in items:
        channel = item.get("channel")
        customer_id = item.get("customer_id")
        recipient = _normalize_recipient(channel, item.get("recipient", ""), customer_id)
        body = (item.get("body") or "").strip()
        if not body:
            raise ValidationError(_("A notification needs a text."), field_errors={"body": [_("Required.")]})
        topic = item.get("topic") or NotificationTopic.OTHER
        if len(topic) > 32:
            raise ValidationError(_("The topic code is too long."), field_errors={"topic": [_("Invalid.")]})
        subject = (item.get("subject") or "")[:200]
        rows.append(
            (
                channel,
                topic,
                recipient,
                subject,
                body,
                customer_id,
                item.get("account_id"),
                item.get("dedupe_key") or None,
            )
        )
    return rows


def notifications_insert_sql(rows: list[tuple], now, *, when: str = "") -> tuple[str, list]:
    """PostgreSQL: the INSERT of ``rows`` (``notification_rows``) as pending, due at ``now``,
    a stored ``dedupe_key`` skipped (``ON CONFLICT DO NOTHING``), returning the new ids in
    the rows' order; ``when``, a SQL condition, inserts them only if it holds (a statement
    that embeds this one in a larger one, e.g. ``EXISTS (SELECT 1 FROM p)``). Returns the
    statement and its parameters; the caller passes the ids to ``notifications_dispatch``."""
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 8
    sql = f"""
        INSERT INTO core_notification (channel, topic, recipient, subject, body, customer_id, account_id,
            dedupe_key, status, attempts, last_error, provider_message_id, created_at, next_attempt_at)
        SELECT c, t, r, s, b, cu, a, k, %s, 0, '', '', %s, %s
        FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], %s::text[],
                    %s::bigint[], %s::bigint[], %s::varchar[]) WITH ORDINALITY
             AS x(c, t, r, s, b, cu, a, k, n)
        {f"WHERE {when}" if when else ""}
        ORDER BY n
        ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
        RETURNING id"""  # noqa: S608 (``when`` is the caller's SQL; values are bound)
    return sql, [NotificationStatus.PENDING.value, now, now, *columns]


def notifications_dispatch(ids, *, dispatch: str = "task") -> None:
    """Queue the delivery of the notifications ``ids``, just inserted in this transaction,
    once it commits: ``"task"`` or ``"batched"`` as ``notifications_enqueue_many`` says."""
    _check_dispatch(dispatch)
    ids = sorted(ids)
    if ids:
        schedule = (
            _push_batched if dispatch == "batched" and _batch_redis() is not None else _schedule_delivery_many
        )
        transaction.on_commit(partial(schedule, ids), robust=True)


def _insert_portable(fresh: list[tuple], now) -> list[int]:
    """The embedded (SQLite) mode: writes are serialised there, so the keys filtered above
    cannot be taken in between; one bulk insert."""
    objs = [
        Notification(
            channel=c,
            topic=t,
            recipient=r,
            subject=s,
            body=b,
            customer_id=cu,
            account_id=a,
            dedupe_key=k,
            status=NotificationStatus.PENDING,
            created_at=now,
            next_attempt_at=now,
        )
        for c, t, r, s, b, cu, a, k in fresh
    ]
    Notification.objects.bulk_create(objs)
    return sorted(o.pk for o in objs)


def _insert_postgres(fresh: list[tuple], now) -> list[int]:
    sql, params = notifications_insert_sql(fresh, now)
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(pk for (pk,) in cursor.fetchall())


def notification_cancel(*, notification_id: int, reason: str = "") -> Notification:
    """Cancel a notification that has not been handed to a sender yet (no-op if final)."""
    with transaction.atomic():
        notification = Notification.objects.select_for_update().filter(pk=notification_id).first()
        if notification is None:
            raise NotFound(_("No such notification."))
        if notification.status == NotificationStatus.PENDING:
            notification.status = NotificationStatus.CANCELLED
            notification.next_attempt_at = None
            notification.last_error = (reason or "cancelled")[:ERROR_LENGTH]
            notification.save(update_fields=["status", "next_attempt_at", "last_error"])
    return notification


# --- deliver ----------------------------------------------------------------------------


def notification_deliver(*, notification_id: int, worker: str = "") -> Notification:
    """One delivery attempt (see the module docstring). Safe to call any number of times,
    concurrently too. Sender errors are handled here (retry with backoff, then ``failed``);
    NotFound if there is no such notification."""
    worker = worker or f"{socket.gethostname()}/{os.getpid()}"
    claimed = _claim(notification_id)
    if not isinstance(claimed, tuple):
        return claimed
    notification, token = claimed
    try:
        provider_message_id = sender_for(notification.channel).send(notification)
    except Exception as exc:  # noqa: BLE001 - any sender failure is recorded, none escapes
        permanent = isinstance(exc, SendError) and exc.permanent
        error = f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, SendError) else str(exc)
        return _record_failure(notification.pk, token, error, permanent=permanent, worker=worker)
    return _record_sent(notification.pk, token, str(provider_message_id or ""), worker=worker)


def _claim(notification_id: int) -> tuple[Notification, datetime] | Notification:
    now = timezone.now()
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update(skip_locked=True).filter(pk=notification_id).first()
        )
        if notification is None:
            current = Notification.objects.filter(pk=notification_id).first()
            if current is None:
                raise NotFound(_("No such notification."))
            _skipped(current, "locked by another transaction")
            return current
        if notification.status in FINAL_NOTIFICATION_STATUSES:
            _skipped(notification, "final")
            return notification
        if notification.status == NotificationStatus.SENDING and notification.lease_until > now:
            _skipped(notification, "claimed", lease_until=notification.lease_until.isoformat())
            return notification
        if notification.status == NotificationStatus.PENDING and (
            notification.next_attempt_at is not None and notification.next_attempt_at > now
        ):
            _skipped(notification, "not due", next_attempt_at=notification.next_attempt_at.isoformat())
            return notification
        if notification.status == NotificationStatus.SENDING:
            # The previous worker's lease ran out without a result: it died or hung. Its
            # attempt counts; whether it reached the recipient is unknown (at least once).
            logger.warning("notification_claim_expired", notification=notification.pk)
            if notification.attempts >= max_attempts():
                notification.status = NotificationStatus.FAILED
                notification.lease_until = notification.next_attempt_at = None
                notification.last_error = _join(notification.last_error, "the last attempt did not finish")
                notification.save(update_fields=["status", "lease_until", "next_attempt_at", "last_error"])
                return notification
        token = now + _lease()
        notification.status = NotificationStatus.SENDING
        notification.attempts += 1
        notification.lease_until = token
        notification.next_attempt_at = token  # if this worker dies, the sweep looks again then
        notification.save(update_fields=["status", "attempts", "lease_until", "next_attempt_at"])
    return notification, token


def _lock_own(notification_id: int, token: datetime, worker: str) -> Notification | None:
    """The row, locked, if this worker's claim still holds it; else None (and a log line)."""
    notification = Notification.objects.select_for_update().get(pk=notification_id)
    if notification.status != NotificationStatus.SENDING or notification.lease_until != token:
        logger.warning(
            "notification_claim_lost",
            notification=notification_id,
            status=notification.status,
            worker=worker,
        )
        return None
    return notification


def _record_sent(notification_id: int, token: datetime, provider_message_id: str, *, worker: str):
    with transaction.atomic():
        notification = _lock_own(notification_id, token, worker)
        if notification is None:
            return Notification.objects.get(pk=notification_id)
        notification.status = NotificationStatus.SENT
        notification.sent_at = timezone.now()
        notification.provider_message_id = provider_message_id[:200]
        notification.lease_until = notification.next_attempt_at = None
        notification.save(
            update_fields=["status", "sent_at", "provider_message_id", "lease_until", "next_attempt_at"]
        )
    logger.info(
        "notification_sent",
        notification=notification.pk,
        channel=notification.channel,
        attempts=notification.attempts,
        provider_message_id=provider_message_id,
    )
    return notification


def _record_failure(notification_id: int, token: datetime, error: str, *, permanent: bool, worker: str):
    with transaction.atomic():
        notification = _lock_own(notification_id, token, worker)
        if notification is None:
            return Notification.objects.get(pk=notification_id)
        now = timezone.now()
        notification.last_error = f"attempt {notification.attempts}: {error}"[:ERROR_LENGTH]
        notification.lease_until = None
        if permanent or notification.attempts >= max_attempts():
            notification.status = NotificationStatus.FAILED
            notification.next_attempt_at = None
        else:
            notification.status = NotificationStatus.PENDING
            notification.next_attempt_at = now + timedelta(seconds=backoff_seconds(notification.attempts))
            transaction.on_commit(
                partial(_schedule_delivery, notification.pk, at=notification.next_attempt_at), robust=True
            )
        notification.save(update_fields=["status", "last_error", "lease_until", "next_attempt_at"])
    logger.warning(
        "notification_send_failed",
        notification=notification.pk,
        channel=notification.channel,
        attempt=notification.attempts,
        final=notification.status == NotificationStatus.FAILED,
        error=error,
    )
    return notification


# --- sweep ------------------------------------------------------------------------------


def notifications_requeue_due(*, now: datetime | None = None) -> int:
    """Schedule delivery of undelivered notifications overdue by more than a grace period:
    pending ones whose task was lost, and ``sending`` ones whose worker's lease ran out.
    Returns how many were scheduled. Duplicate tasks are harmless (the claim decides)."""
    now = now or timezone.now()
    due = list(
        Notification.objects.filter(
            status__in=[NotificationStatus.PENDING, NotificationStatus.SENDING],
            next_attempt_at__lt=now - SWEEP_GRACE,
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    for pk in due:
        _schedule_delivery(pk)
    if due:
        logger.warning("notifications_requeued", count=len(due), first=due[0])
    return len(due)


# --- reads ------------------------------------------------------------------------------


def notifications_for_customer(*, customer_id: int, limit: int = 50) -> QuerySet[Notification]:
    """The customer's notifications, newest first (every channel; the portal shows them)."""
    return Notification.objects.filter(customer_id=customer_id).order_by("-created_at", "-id")[:limit]


# --- helpers ----------------------------------------------------------------------------


def _schedule_delivery(notification_id: int, *, at: datetime | None = None) -> None:
    """Queue ``notification_deliver_task`` (call through ``transaction.on_commit``)."""
    from core.tasks import notification_deliver_task  # tasks import this module

    if at is not None and at > timezone.now():
        notification_deliver_task.apply_async((notification_id,), eta=at)
    else:
        notification_deliver_task.delay(notification_id)


def _schedule_delivery_many(notification_ids: list[int]) -> None:
    """Queue one ``notifications_deliver_many_task`` for all of ``notification_ids``."""
    from core.tasks import notifications_deliver_many_task  # tasks import this module

    notifications_deliver_many_task.delay(list(notification_ids))


# --- batched dispatch -------------------------------------------------------------------

# The Redis list of notification ids waiting for ``notifications_flush``.
BATCH_KEY = "kilowatt:notifications:batched"
# At most this many ids are taken from the list by one flush (the rest wait for the next).
FLUSH_MAX = 20_000

_batch_client: list = []  # [(REDIS_URL, client)] once made; one per process


def _batch_redis():
    """The Redis client for the batch list (one per process; redis-py's pool reconnects
    after a fork), or None without ``REDIS_URL`` (embedded mode)."""
    url = getattr(settings, "REDIS_URL", "")
    if not url:
        return None
    if not _batch_client or _batch_client[0][0] != url:
        import redis

        _batch_client[:] = [(url, redis.Redis.from_url(url))]
    return _batch_client[0][1]


def _push_batched(notification_ids: list[int]) -> None:
    """Append ``notification_ids`` to the batch list (call through ``transaction.on_commit``).
    If Redis refuses, the ids are lost from the list only: the rows stay due and the sweep
    queues them."""
    try:
        _batch_redis().rpush(BATCH_KEY, *notification_ids)
    except Exception:  # noqa: BLE001 - the sweep covers a lost push
        logger.warning(
            "notifications_batch_push_failed", count=len(notification_ids), first=notification_ids[0]
        )


def notifications_flush(*, limit: int = FLUSH_MAX) -> int:
    """Take up to ``limit`` ids from the batch list and queue one
    ``notifications_deliver_many_task`` per chunk of ``DELIVER_MANY_CHUNK``. Returns how many
    ids were taken. An id taken but not queued (the broker failed) is still due: the sweep
    queues it. Duplicates are harmless (the claim decides)."""
    from core.tasks import DELIVER_MANY_CHUNK, notifications_deliver_many_task  # tasks import this module

    client = _batch_redis()
    if client is None:
        return 0
    taken = 0
    while taken < limit:
        raw = client.lpop(BATCH_KEY, min(DELIVER_MANY_CHUNK, limit - taken))
        if not raw:
            break
        ids = [int(value) for value in raw]
        taken += len(ids)
        notifications_deliver_many_task.delay(ids)
    if taken:
        logger.info("notifications_flushed", count=taken)
    return taken


def _skipped(notification: Notification, why: str, **extra) -> None:
    logger.info(
        "notification_deliver_skipped",
        notification=notification.pk,
        status=notification.status,
        reason=why,
        **extra,
    )


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)[-ERROR_LENGTH:]
