"""Remote commands (DESIGN.md flow 4): request, cancel, dispatch, reap, and latency figures.

Life cycle: requested → queued → sent → confirmed | failed | timed_out | cancelled, only by
the steps in ``metering.models.COMMAND_TRANSITIONS`` (``_transition`` refuses the others and
stamps the step's time). Requests and cancellations lock the meter row, then the command
rows (always in that order); dispatch does its I/O with no lock held.

No duplicate execution
----------------------
A command can reach ``command_dispatch`` more than once: Celery redelivers the task of a
worker that died (acks_late + reject_on_worker_lost), the reaper requeues a command whose
dispatcher vanished, a retried request schedules it again. What keeps a meter from carrying
out one command twice:

1. **A claim with a lease.** The dispatcher locks the row (SKIP LOCKED) and leaves it alone
   if it is final, not due yet, or claimed by another dispatcher whose lease is still live;
   otherwise it sets ``lease_until = now + lease``. That time is the claim's token: a new
   claim is only possible after the lease ran out, so its time is strictly later, and every
   write after I/O first checks, under the row lock, that the token is still the one it
   set. A dispatcher that lost its claim (or whose command was cancelled or superseded)
   writes nothing and sends nothing.
2. **Read back first.** Every attempt starts by reading the meter's status word. If the
   meter is already in the commanded state (relay open for a trip...) the command is
   confirmed without sending. This is what makes redelivery safe after a worker died
   between "the meter acknowledged" and "the result was committed": the next dispatcher
   sees the relay open and confirms.
3. **Record, commit, then send.** The attempt row, status ``sent`` and a fresh lease are
   committed before the frame goes out (CONVENTIONS §6: no I/O under a lock). The head-end
   adapter never resends by itself.
4. **Confirm by read-back.** After the meter's acknowledgement the status is read again and
   only that confirms. A lost reply, a bad frame, an acknowledgement without the state or a
   failed read-back puts the command back in the queue with a backoff; the next attempt
   starts again with step 2, so an unknown outcome is never resolved by resending blindly.
5. **The lease outlasts the I/O** (``METERING_COMMAND_LEASE_SECONDS`` > 2 exchanges of
   connect + reply, each bounded by ``METERING_COMMAND_TIMEOUT``), so no second dispatcher
   can read back while the first one's frame may still be on its way.

An attempt that a dead dispatcher left unfinished is *resumed* by the next claim (no new
attempt is counted): its read-back either confirms the command (the frame took effect) or
closes the attempt as not executed, and only then is a new attempt sent.

Decisions
---------
* ``attempts`` counts tries (each a read-back, at most one frame, a read-back), bounded by
  ``max_attempts``; a meter that never answers fails after ``max_attempts`` tries.
* A refusal by the meter (HeadEndError kind ``refused``), and a trip while the meter
  reports keep-power (保电) set, fail at once without retries and open a field work order.
* Parameter and tariff download and firmware upgrade are accepted and stored, but the
  DL/T 645 adapter implements only remote control (0x1C): dispatch fails them at once with
  "not supported by protocol dlt645-2007" and opens **no** work order (a technician on site
  cannot supply a missing head-end function; the failed command is the record).
* A command whose validity ends before it could be confirmed becomes ``timed_out`` (the
  need expired) without a work order.
* A new relay command supersedes the meter's active one. A queued one is cancelled; one
  that is in flight (sent, live lease) is cancelled too (via queued, the only way the table
  allows), and the new command is held until that lease has run out, so it reads back the
  meter only after the older frame either arrived or can no longer arrive.
* ``last_error`` also carries the note of a cancellation or supersession.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

import structlog
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Aggregate, Count, DurationField, ExpressionWrapper, F, Max, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.models import Role, StaffProfile
from core.permissions import Actor, Cap, can_see_unit
from metering.headend import dlt645
from metering.headend.base import HeadEndError, RelayStatus
from metering.headend.registry import get_adapter
from metering.models import (
    ACTIVE_COMMAND_STATUSES,
    COMMAND_TRANSITIONS,
    FINAL_COMMAND_STATUSES,
    RELAY_ACTIONS,
    CommandAction,
    CommandAttempt,
    CommandOrigin,
    CommandStatus,
    CostControlMode,
    FieldWorkOrder,
    Meter,
    MeterStatus,
    RelayState,
    RemoteCommand,
)

logger = structlog.get_logger(__name__)

DEFAULT_BACKOFF_SECONDS = (10, 30, 90, 270, 600)
WORK_ORDER_KIND = "command_failed"
# The reaper reschedules a queued command whose task seems lost (Redis restarted, a bug)
# once it is this late; a backlog of due tasks is normal for a few minutes of a mass run.
REAP_GRACE = timedelta(minutes=5)
REAP_BATCH = 1000
# A redelivered task that finds a live lease looks again this long after the lease ends.
LEASE_RECHECK = timedelta(seconds=1)

# Whether a read-back status shows the meter in the state a command asks for. Actions
# missing here have no head-end implementation yet (see "Decisions" above).
COMMANDED_STATE = {
    CommandAction.TRIP: lambda s: s.relay_open,
    CommandAction.CLOSE: lambda s: not s.relay_open,
    # 合闸允许 leaves the relay open until the customer presses the button: the meter shows
    # it by clearing the "last relay command = trip" bit of status word 3.
    CommandAction.CLOSE_ALLOWED: lambda s: (
        not s.relay_open or not s.raw_status_word & dlt645.STATUS3_RELAY_COMMAND_OPEN
    ),
    CommandAction.ALARM_ON: lambda s: s.alarm,
    CommandAction.ALARM_OFF: lambda s: not s.alarm,
    CommandAction.KEEP_POWER_ON: lambda s: s.keep_power,
    CommandAction.KEEP_POWER_OFF: lambda s: not s.keep_power,
}


# --- settings ---------------------------------------------------------------------------


def _timeout() -> float:
    return float(getattr(settings, "METERING_COMMAND_TIMEOUT", 3.0))


def _lease() -> timedelta:
    """How long a claim lasts: never shorter than read-back + send + read-back can take
    (each exchange is a connect and a reply, each bounded by the timeout)."""
    floor = 4 * _timeout() + 2
    configured = float(getattr(settings, "METERING_COMMAND_LEASE_SECONDS", 0) or 0)
    return timedelta(seconds=max(configured, floor))


def backoff_seconds(attempt: int) -> int:
    """The wait after failed attempt ``attempt`` (1-based); the last step repeats."""
    steps = list(getattr(settings, "METERING_COMMAND_BACKOFF_SECONDS", None) or DEFAULT_BACKOFF_SECONDS)
    return int(steps[min(max(attempt, 1), len(steps)) - 1])


# --- transitions ------------------------------------------------------------------------


def _transition(
    cmd: RemoteCommand, to_status: str, *, now: datetime | None = None, **fields
) -> RemoteCommand:
    """Move ``cmd`` to ``to_status`` if COMMAND_TRANSITIONS allows it (else Conflict), stamp
    the step's time and set ``fields``; saves those fields if the row exists."""
    current = CommandStatus(cmd.status)
    target = CommandStatus(to_status)
    if target not in COMMAND_TRANSITIONS[current]:
        raise Conflict(
            _("A command that is %(current)s cannot become %(target)s.")
            % {"current": current.label, "target": target.label},
            code="command_transition",
        )
    now = now or timezone.now()
    changes: dict = {"status": target.value}
    if target == CommandStatus.QUEUED and cmd.queued_at is None:
        changes["queued_at"] = now  # first time queued; later re-queues keep it
    elif target == CommandStatus.SENT:
        changes["sent_at"] = now  # the latest send: sent → confirmed is the meter's part
    elif target == CommandStatus.CONFIRMED:
        changes["confirmed_at"] = now
    if target in FINAL_COMMAND_STATUSES:
        changes.update(finished_at=now, lease_until=None, next_attempt_at=None)
    changes.update(fields)
    for name, value in changes.items():
        setattr(cmd, name, value)
    if cmd.pk is not None:
        cmd.save(update_fields=list(changes))
    return cmd


# --- request and cancel -----------------------------------------------------------------


def _actor_meta(actor: Actor | None) -> dict:
    if actor is None:
        return {}
    meta = {"user": actor.user_id, "username": actor.username, "role": actor.role}
    if actor.org_unit is not None:
        meta.update(org_unit=actor.org_unit.code, org_unit_name=actor.org_unit.name)
    return meta


def _check_control_right(actor: Actor | None) -> Actor:
    if actor is None or not actor.has(Cap.METER_CONTROL):
        raise PermissionDenied(_("You are not allowed to send remote commands to meters."))
    return actor


def _check_scope(actor: Actor, meter: Meter) -> None:
    """Outside the actor's org units the meter does not exist, as far as they can tell."""
    if actor.is_global:
        return
    station = meter.transformer_area.supply_station if meter.transformer_area_id else None
    if station is None or not can_see_unit(actor, station):
        raise NotFound(_("No such meter."))


def _lock_meter(meter_id: int) -> Meter:
    meter = Meter.objects.select_for_update(no_key=True).filter(pk=meter_id).first()
    if meter is None:
        raise NotFound(_("No such meter."))
    return meter


@transaction.atomic
def command_request(
    *,
    meter: Meter,
    action: str,
    reason: str,
    origin: str,
    actor: Actor | None = None,
    idempotency_key: str | None = None,
    parameters: dict | None = None,
    valid_for: timedelta = timedelta(minutes=30),
) -> RemoteCommand:
    """Record a remote command for ``meter`` and schedule its dispatch after commit.

    Staff commands need an actor with METER_CONTROL whose org units contain the meter's
    supply station. The same ``idempotency_key`` returns the first command unchanged. A new
    relay command (trip / close / close allowed) supersedes the meter's active one."""
    try:
        action = CommandAction(action)
        origin = CommandOrigin(origin)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if origin == CommandOrigin.STAFF:
        _check_control_right(actor)
    meter = _lock_meter(meter.pk)  # first lock: the meter, then its commands
    if actor is not None:
        _check_scope(actor, meter)

    if idempotency_key:
        existing = RemoteCommand.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_request(existing, meter=meter, action=action)

    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(field_errors={"reason": [_("Give the reason for the command.")]})
    if len(reason) > 300:
        raise ValidationError(field_errors={"reason": [_("Keep the reason under 300 characters.")]})
    if meter.status != MeterStatus.INSTALLED:
        raise ValidationError(
            _("Meter %(asset)s is not installed: remote commands go to installed meters only.")
            % {"asset": meter.asset_number}
        )
    is_admin = actor is not None and actor.role == Role.ADMIN
    if action in RELAY_ACTIONS and meter.cost_control_mode == CostControlMode.NONE and not is_admin:
        raise ValidationError(
            _("Meter %(asset)s has no cost control: only an administrator may trip or close it remotely.")
            % {"asset": meter.asset_number}
        )
    if valid_for <= timedelta(0):
        raise ValidationError(_("A command must stay valid for some time."))

    meta = {"action": "meter.command_request", "meter": meter.asset_number, "reason": reason}
    meta.update(_actor_meta(actor))
    with audit_context(**meta):
        now = timezone.now()
        hold_until = None
        superseded = []
        if action in RELAY_ACTIONS:
            older = RemoteCommand.objects.select_for_update(no_key=True).filter(
                meter=meter, action__in=RELAY_ACTIONS, status__in=ACTIVE_COMMAND_STATUSES
            )
            for old in older:
                in_flight_until, note = _supersede(old, now=now)
                if in_flight_until and (hold_until is None or in_flight_until > hold_until):
                    hold_until = in_flight_until
                superseded.append((old, note))

        cmd = RemoteCommand(
            meter=meter,
            action=action,
            parameters=parameters or {},
            origin=origin,
            reason=reason,
            requested_by_id=actor.user_id if actor is not None else None,
            idempotency_key=idempotency_key or None,
            valid_until=now + valid_for,
        )
        try:
            with transaction.atomic():
                cmd.save()
        except IntegrityError:
            # The same key inserted meanwhile (for another meter: our meter lock does not
            # serialise that), or a constraint broken by a bug: never a second command.
            existing = (
                idempotency_key and RemoteCommand.objects.filter(idempotency_key=idempotency_key).first()
            )
            if existing:
                return _same_request(existing, meter=meter, action=action)
            raise
        _transition(cmd, CommandStatus.QUEUED, next_attempt_at=hold_until)
        for old, note in superseded:
            old.last_error = f"superseded by command {cmd.pk} ({action.value}){note}"[:300]
            old.save(update_fields=["last_error"])

    transaction.on_commit(partial(_schedule_dispatch, cmd.pk, at=hold_until), robust=True)
    logger.info(
        "command_requested",
        command=cmd.pk,
        meter=meter.asset_number,
        action=action.value,
        origin=origin.value,
        superseded=[old.pk for old, _note in superseded],
    )
    return cmd


@transaction.atomic
def commands_request_many(
    requests: list[tuple[int, str, str, str]],
    *,
    origin: str = CommandOrigin.POLICY,
    valid_for: timedelta = timedelta(minutes=30),
) -> dict[str, RemoteCommand]:
    """``command_request`` for many commands of the system itself (no actor): ``requests`` are
    ``(meter_id, action, reason, idempotency_key)``. Returns the command of every key.

    The same rules as one ``command_request`` after another, with fewer statements: the
    meters are locked in id order (one query), then the keys already used are looked up (one
    query; a key must name the same meter and action, else Conflict), the meters' active relay
    commands are superseded exactly as ``command_request`` does (``_supersede``; a new command
    waits for an in-flight one's lease), the new commands are inserted together, already
    queued, and each one's dispatch is scheduled after commit. A key given twice yields one
    command; two keys for one meter are taken in order (the later supersedes the earlier)."""
    try:
        origin = CommandOrigin(origin)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if origin == CommandOrigin.STAFF:
        raise ValidationError(_("Staff commands are requested one by one, with the actor (command_request)."))
    if valid_for <= timedelta(0):
        raise ValidationError(_("A command must stay valid for some time."))
    wanted: dict[str, tuple[int, CommandAction, str]] = {}
    for meter_id, action, reason, key in requests:
        try:
            action = CommandAction(action)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if not key:
            raise ValidationError(_("Every command of a bulk request needs an idempotency key."))
        if key in wanted:
            if wanted[key][:2] != (meter_id, action):
                raise Conflict(
                    _("This idempotency key was already used for another command."),
                    code="idempotency_key_reused",
                )
            continue
        wanted[key] = (meter_id, action, (reason or "").strip())
    if not wanted:
        return {}
    meter_ids = sorted({meter_id for meter_id, _a, _r in wanted.values()})
    # First lock: the meters, in id order; then their commands.
    meters = {
        m.pk: m for m in Meter.objects.select_for_update(no_key=True).filter(pk__in=meter_ids).order_by("pk")
    }
    if len(meters) != len(meter_ids):
        raise NotFound(_("No such meter."))

    result: dict[str, RemoteCommand] = {}
    for existing in RemoteCommand.objects.filter(idempotency_key__in=list(wanted)):
        meter_id, action, _reason = wanted.pop(existing.idempotency_key)
        result[existing.idempotency_key] = _same_request(existing, meter=meters[meter_id], action=action)
    for meter_id, action, reason in wanted.values():
        meter = meters[meter_id]
        if not reason:
            raise ValidationError(field_errors={"reason": [_("Give the reason for the command.")]})
        if len(reason) > 300:
            raise ValidationError(field_errors={"reason": [_("Keep the reason under 300 characters.")]})
        if meter.status != MeterStatus.INSTALLED:
            raise ValidationError(
                _("Meter %(asset)s is not installed: remote commands go to installed meters only.")
                % {"asset": meter.asset_number}
            )
        if action in RELAY_ACTIONS and meter.cost_control_mode == CostControlMode.NONE:
            raise ValidationError(
                _("Meter %(asset)s has no cost control: only an administrator may trip or close it remotely.")
                % {"asset": meter.asset_number}
            )

    # Rounds of at most one new command per meter, in the order given (one meter, one active
    # relay command: the unique constraint).
    pending = list(wanted.items())
    created: list[tuple[RemoteCommand, datetime | None, list[int]]] = []
    with audit_context(action="meter.commands_request_many", origin=origin.value, count=len(pending)):
        while pending:
            round_, later, seen = [], [], set()
            for item in pending:
                (later if item[1][0] in seen else round_).append(item)
                seen.add(item[1][0])
            pending = later
            created.extend(_request_round(round_, meters, origin=origin, valid_for=valid_for, result=result))

    def schedule():
        for cmd, hold_until, _superseded in created:
            _schedule_dispatch(cmd.pk, at=hold_until)

    if created:
        transaction.on_commit(schedule, robust=True)
    for cmd, _hold, superseded in created:
        logger.info(
            "command_requested",
            command=cmd.pk,
            meter=meters[cmd.meter_id].asset_number,
            action=cmd.action,
            origin=origin.value,
            superseded=superseded,
        )
    return result


def _request_round(
    round_: list[tuple[str, tuple[int, CommandAction, str]]],
    meters: dict[int, Meter],
    *,
    origin: CommandOrigin,
    valid_for: timedelta,
    result: dict[str, RemoteCommand],
) -> list[tuple[RemoteCommand, datetime | None, list[int]]]:
    """One new command for each of a set of distinct meters (see ``commands_request_many``):
    the commands created, each with when its dispatch may start and the ids it superseded."""
    try:
        # A savepoint: if the insert fails, the supersessions are undone with it.
        with transaction.atomic():
            created = _insert_round(round_, meters, origin=origin, valid_for=valid_for)
    except IntegrityError:
        # A key inserted meanwhile by another transaction (our meter locks do not serialise
        # keys of other meters), or a bug: one request at a time, which returns the first
        # command of a raced key, raises for anything else and schedules its own dispatch.
        for key, (meter_id, action, reason) in round_:
            result[key] = command_request(
                meter=meters[meter_id],
                action=action,
                reason=reason,
                origin=origin,
                idempotency_key=key,
                valid_for=valid_for,
            )
        return []
    for cmd, _hold, _superseded in created:
        result[cmd.idempotency_key] = cmd
    return created


def _insert_round(round_, meters, *, origin, valid_for):
    now = timezone.now()
    relay_meters = [meter_id for _key, (meter_id, action, _r) in round_ if action in RELAY_ACTIONS]
    hold: dict[int, datetime] = {}
    superseded: dict[int, list[tuple[RemoteCommand, str]]] = {}
    if relay_meters:
        older = (
            RemoteCommand.objects.select_for_update(no_key=True)
            .filter(meter_id__in=relay_meters, action__in=RELAY_ACTIONS, status__in=ACTIVE_COMMAND_STATUSES)
            .order_by("meter_id", "pk")
        )
        for old in older:
            in_flight_until, note = _supersede(old, now=now)
            if in_flight_until and (old.meter_id not in hold or in_flight_until > hold[old.meter_id]):
                hold[old.meter_id] = in_flight_until
            superseded.setdefault(old.meter_id, []).append((old, note))
    commands = []
    for key, (meter_id, action, reason) in round_:
        cmd = RemoteCommand(
            meter=meters[meter_id],
            action=action,
            parameters={},
            origin=origin,
            reason=reason,
            idempotency_key=key,
            valid_until=now + valid_for,
        )
        # Unsaved, so only checked and stamped: requested → queued (the row is inserted queued).
        _transition(cmd, CommandStatus.QUEUED, now=now, next_attempt_at=hold.get(meter_id))
        commands.append(cmd)
    RemoteCommand.objects.bulk_create(commands)
    created = []
    for cmd in commands:
        olds = superseded.get(cmd.meter_id, ())
        for old, note in olds:
            old.last_error = f"superseded by command {cmd.pk} ({cmd.action}){note}"[:300]
            old.save(update_fields=["last_error"])
        created.append((cmd, hold.get(cmd.meter_id), [old.pk for old, _note in olds]))
    return created


def _same_request(existing: RemoteCommand, *, meter: Meter, action: str) -> RemoteCommand:
    if existing.meter_id != meter.pk or existing.action != action:
        raise Conflict(
            _("This idempotency key was already used for another command."), code="idempotency_key_reused"
        )
    return existing


def _supersede(old: RemoteCommand, *, now: datetime) -> tuple[datetime | None, str]:
    """Cancel an older active relay command. Returns when its dispatcher's lease ends if
    its frame may still be on its way (the new command waits until then), and a note."""
    in_flight_until, note = None, ""
    if old.status == CommandStatus.SENT:
        if old.lease_until and old.lease_until > now:
            in_flight_until = old.lease_until
        note = f" while in flight (sent {old.sent_at:%Y-%m-%d %H:%M:%S%z}; its frame may have taken effect)"
        _transition(old, CommandStatus.QUEUED, now=now)  # sent → cancelled goes via queued
    # Its dispatcher, if any, finds its lease gone and records nothing more.
    _transition(old, CommandStatus.CANCELLED, now=now)
    return in_flight_until, note


@transaction.atomic
def command_cancel(*, command: RemoteCommand, actor: Actor, reason: str) -> RemoteCommand:
    """Cancel a command that has not been sent yet (requested or queued)."""
    _check_control_right(actor)
    reason = (reason or "").strip()
    meter = _lock_meter(command.meter_id)
    _check_scope(actor, meter)
    if not reason:
        raise ValidationError(field_errors={"reason": [_("Give the reason for cancelling.")]})
    cmd = RemoteCommand.objects.select_for_update(no_key=True).get(pk=command.pk)
    if cmd.status not in (CommandStatus.REQUESTED, CommandStatus.QUEUED):
        raise Conflict(
            _(
                "The command is %(status)s and can no longer be cancelled; "
                "to undo a sent command, request the opposite one."
            )
            % {"status": CommandStatus(cmd.status).label},
            code="command_not_cancellable",
        )
    meta = {"action": "meter.command_cancel", "command": cmd.pk, "reason": reason, **_actor_meta(actor)}
    with audit_context(**meta):
        # A dispatcher reading back right now finds its lease gone and sends nothing.
        _transition(cmd, CommandStatus.CANCELLED, last_error=f"cancelled by {actor.username}: {reason}"[:300])
    logger.info("command_cancelled", command=cmd.pk, by=actor.username)
    return cmd


# --- dispatch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    command: RemoteCommand
    meter: Meter
    attempt: CommandAttempt
    token: datetime  # the lease_until this dispatcher set: proof that the claim is still its own
    resumed: bool  # the attempt was left unfinished by a dispatcher whose lease expired
    worker: str


def command_dispatch(*, command_id: int, worker: str = "") -> RemoteCommand:
    """Run one attempt of a command: claim, read back, send if needed, confirm by read-back.

    Safe to call any number of times, concurrently too (see the module docstring). Not one
    transaction: each step commits on its own so that no lock is held during I/O. Head-end
    errors are handled here (retry with backoff, fail, work order); NotFound if there is no
    such command."""
    worker = (worker or f"{socket.gethostname()}/{os.getpid()}")[:100]
    claimed = _claim(command_id, worker)
    if isinstance(claimed, RemoteCommand):
        return claimed
    return _run_attempt(claimed)


def _claim(command_id: int, worker: str) -> _Claim | RemoteCommand:
    now = timezone.now()
    with transaction.atomic():
        cmd = (
            RemoteCommand.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(pk=command_id)
            .first()
        )
        if cmd is None:
            current = RemoteCommand.objects.filter(pk=command_id).first()
            if current is None:
                raise NotFound(_("No such remote command."))
            _skipped(current, "locked by another transaction")
            return current
        if cmd.status in FINAL_COMMAND_STATUSES:
            _skipped(cmd, "final")
            return cmd
        if cmd.lease_until and cmd.lease_until > now:
            # Another dispatcher holds it. Look again when its lease ends: if it died, that
            # is when the command is resumed (read back before anything is resent).
            transaction.on_commit(
                partial(_schedule_dispatch, cmd.pk, at=cmd.lease_until + LEASE_RECHECK), robust=True
            )
            _skipped(cmd, "leased", lease_until=cmd.lease_until.isoformat())
            return cmd
        meter = Meter.objects.select_related("terminal").get(pk=cmd.meter_id)
        unfinished = cmd.attempt_log.filter(finished_at__isnull=True).order_by("-number").first()
        if cmd.status == CommandStatus.SENT:
            _requeue_stale(cmd, now)
        elif cmd.status == CommandStatus.REQUESTED:
            _transition(cmd, CommandStatus.QUEUED, now=now)

        if unfinished is None:
            if cmd.next_attempt_at and cmd.next_attempt_at > now:
                _skipped(cmd, "not due", next_attempt_at=cmd.next_attempt_at.isoformat())
                return cmd
            if cmd.action not in COMMANDED_STATE:
                error = f"{cmd.action} is not supported by protocol {meter.protocol}"
                _transition(cmd, CommandStatus.FAILED, now=now, last_error=error)
                logger.warning(
                    "command_unsupported", command=cmd.pk, action=cmd.action, protocol=meter.protocol
                )
                return cmd
            if now >= cmd.valid_until:
                return _time_out(cmd, now, "the command's validity ended before it could be sent")
            if cmd.attempts >= cmd.max_attempts:  # not reached normally: the last failure ends it
                return _fail_locked(cmd, meter, f"no attempts left ({cmd.attempts} made)", worker, now=now)
            cmd.attempts += 1
            attempt = CommandAttempt.objects.create(
                command=cmd, number=cmd.attempts, worker=worker, started_at=now
            )
            resumed = False
        else:
            attempt = unfinished
            attempt.detail = _join(
                attempt.detail,
                f"resumed by {worker} at {now:%H:%M:%S}: the dispatcher's lease ran out before it "
                "recorded a result",
            )
            attempt.save(update_fields=["detail"])
            resumed = True
        token = now + _lease()
        cmd.lease_until = token
        cmd.next_attempt_at = None
        cmd.save(update_fields=["attempts", "lease_until", "next_attempt_at"])
    return _Claim(command=cmd, meter=meter, attempt=attempt, token=token, resumed=resumed, worker=worker)


def _run_attempt(claim: _Claim) -> RemoteCommand:
    cmd, meter = claim.command, claim.meter
    action = CommandAction(cmd.action)
    reached = COMMANDED_STATE[action]
    endpoint = meter.terminal.endpoint if meter.terminal_id else settings.METERING_DEFAULT_ENDPOINT
    address, timeout = meter.comm_address, _timeout()
    try:
        adapter = get_adapter(meter.protocol)
        before = adapter.read_status_sync(endpoint, address, timeout=timeout)
    except HeadEndError as exc:
        return _attempt_failed(claim, exc.kind, f"read-back before sending failed: {exc}")
    except ValueError as exc:  # a malformed endpoint or address: configuration, not the meter
        return _fail(claim, "configuration", f"cannot reach the meter: {exc}", work_order=False)

    if reached(before):
        return _confirm(claim, before, frame_sent=False)
    if timezone.now() >= cmd.valid_until:
        return _finish_timed_out(claim, before)
    if action == CommandAction.TRIP and before.keep_power:
        return _fail(
            claim,
            "refused",
            f"keep-power (保电) is set in meter {address}, which refuses a trip "
            f"({_describe(before)}); release keep-power first",
            status=before,
        )

    sending = _mark_sent(claim, before)
    if isinstance(sending, RemoteCommand):
        return sending
    claim = sending
    try:
        adapter.control_sync(endpoint, address, action.value, valid_until=cmd.valid_until, timeout=timeout)
    except HeadEndError as exc:
        if exc.kind == "refused":
            return _fail(claim, "refused", _refusal_text(exc, meter, action))
        # A lost or garbled reply: the meter may or may not have acted. The next attempt
        # reads back before it sends anything.
        return _attempt_failed(claim, exc.kind, f"{action.value} sent, outcome unknown: {exc}")

    _test_hook_after_send()

    try:
        after = adapter.read_status_sync(endpoint, address, timeout=timeout)
    except HeadEndError as exc:
        return _attempt_failed(
            claim, "unconfirmed", f"the meter acknowledged {action.value} but the read-back failed: {exc}"
        )
    if reached(after):
        return _confirm(claim, after, frame_sent=True)
    return _attempt_failed(
        claim,
        "unconfirmed",
        f"the meter acknowledged {action.value} but reads back {_describe(after)}",
        status=after,
    )


def _test_hook_after_send() -> None:
    """TEST HOOK, not a feature. With KILOWATT_TEST_CRASH_AFTER_SEND=1 in its environment the
    process dies right after the meter acknowledged a frame and before the result is
    recorded: the worst moment for a worker to be killed. Only the worker that
    tests/metering/test_command_dispatch.py starts sets it."""
    if os.environ.get("KILOWATT_TEST_CRASH_AFTER_SEND") == "1":
        os._exit(1)


def _mark_sent(claim: _Claim, before: RelayStatus) -> _Claim | RemoteCommand:
    """Commit the send before making it: attempt row, status sent, a fresh lease."""
    now = timezone.now()
    with transaction.atomic():
        meter, cmd = _lock(claim)
        if cmd.lease_until != claim.token or now >= claim.token or cmd.status != CommandStatus.QUEUED:
            return _lost(claim, cmd)
        attempt = claim.attempt
        if attempt.sent_at is not None:
            # A resumed attempt whose frame did not take effect: close it, start the next.
            _close_attempt(
                attempt,
                now,
                "not_executed",
                f"read back {_describe(before)} after the lease ran out: the frame did not take effect",
            )
            if cmd.attempts >= cmd.max_attempts:
                return _fail_locked(
                    cmd,
                    meter,
                    f"{cmd.action} did not take effect after {cmd.attempts} attempts "
                    f"(the meter reads back {_describe(before)})",
                    claim.worker,
                    now=now,
                )
            cmd.attempts += 1
            attempt = CommandAttempt.objects.create(
                command=cmd, number=cmd.attempts, worker=claim.worker, started_at=now
            )
        attempt.sent_at = now
        attempt.save(update_fields=["sent_at"])
        token = now + _lease()
        _transition(cmd, CommandStatus.SENT, now=now, lease_until=token, attempts=cmd.attempts)
    return replace(claim, command=cmd, attempt=attempt, token=token)


def _confirm(claim: _Claim, status: RelayStatus, *, frame_sent: bool) -> RemoteCommand:
    now = timezone.now()
    with transaction.atomic():
        meter, cmd = _lock(claim)
        if cmd.lease_until != claim.token or cmd.status in FINAL_COMMAND_STATUSES:
            return _lost(claim, cmd)
        if frame_sent:
            outcome = "confirmed"
        elif claim.resumed and claim.attempt.sent_at is not None:
            outcome = "confirmed_after_resume"  # the dead dispatcher's frame took effect
        else:
            outcome = "already_in_state"
        _close_attempt(claim.attempt, now, outcome, f"read back {_describe(status)}")
        with _dispatch_audit(cmd, claim.worker, "meter.command_confirmed"):
            _record_meter_status(meter, status, now)
        response = _status_json(status, now)
        response["frame_sent"] = frame_sent
        _transition(cmd, CommandStatus.CONFIRMED, now=now, meter_response=response)
    logger.info(
        "command_confirmed",
        command=cmd.pk,
        action=cmd.action,
        meter=meter.asset_number,
        outcome=outcome,
        latency_s=cmd.latency_seconds,
    )
    return cmd


def _attempt_failed(claim: _Claim, outcome: str, error: str, *, status: RelayStatus | None = None):
    """An attempt that may be retried: back to the queue with a backoff, or failed (and a
    work order) when it was the last one."""
    now = timezone.now()
    with transaction.atomic():
        meter, cmd = _lock(claim)
        if cmd.lease_until != claim.token or cmd.status in FINAL_COMMAND_STATUSES:
            return _lost(claim, cmd)
        _close_attempt(claim.attempt, now, outcome, error)
        if status is not None:
            with _dispatch_audit(cmd, claim.worker, "meter.command_read_back"):
                _record_meter_status(meter, status, now)
        if cmd.attempts >= cmd.max_attempts:
            return _fail_locked(
                cmd, meter, f"attempt {cmd.attempts} of {cmd.max_attempts}: {error}", claim.worker, now=now
            )
        next_at = now + timedelta(seconds=backoff_seconds(cmd.attempts))
        if next_at >= cmd.valid_until:
            return _time_out(cmd, now, f"{error}; the next attempt would come after the command's validity")
        error = f"attempt {cmd.attempts} of {cmd.max_attempts}: {error}"[:300]
        if cmd.status == CommandStatus.SENT:
            _transition(
                cmd,
                CommandStatus.QUEUED,
                now=now,
                next_attempt_at=next_at,
                lease_until=None,
                last_error=error,
            )
        else:
            cmd.next_attempt_at, cmd.lease_until, cmd.last_error = next_at, None, error
            cmd.save(update_fields=["next_attempt_at", "lease_until", "last_error"])
        transaction.on_commit(partial(_schedule_dispatch, cmd.pk, at=next_at), robust=True)
    logger.warning(
        "command_attempt_failed",
        command=cmd.pk,
        attempt=cmd.attempts,
        outcome=outcome,
        error=error,
        next_attempt_at=next_at.isoformat(),
    )
    return cmd


def _fail(
    claim: _Claim, outcome: str, error: str, *, status: RelayStatus | None = None, work_order: bool = True
) -> RemoteCommand:
    """Fail at once, without retries (a refusal, a configuration error)."""
    now = timezone.now()
    with transaction.atomic():
        meter, cmd = _lock(claim)
        if cmd.lease_until != claim.token or cmd.status in FINAL_COMMAND_STATUSES:
            return _lost(claim, cmd)
        _close_attempt(claim.attempt, now, outcome, error)
        if status is not None:
            with _dispatch_audit(cmd, claim.worker, "meter.command_read_back"):
                _record_meter_status(meter, status, now)
        return _fail_locked(cmd, meter, error, claim.worker, now=now, work_order=work_order)


def _finish_timed_out(claim: _Claim, status: RelayStatus) -> RemoteCommand:
    now = timezone.now()
    with transaction.atomic():
        meter, cmd = _lock(claim)
        if cmd.lease_until != claim.token or cmd.status in FINAL_COMMAND_STATUSES:
            return _lost(claim, cmd)
        message = f"the command's validity ended; the meter reads back {_describe(status)}"
        _close_attempt(claim.attempt, now, "timed_out", message)
        with _dispatch_audit(cmd, claim.worker, "meter.command_read_back"):
            _record_meter_status(meter, status, now)
        return _time_out(cmd, now, message)


def _fail_locked(
    cmd: RemoteCommand, meter: Meter, error: str, worker: str, *, now: datetime, work_order: bool = True
) -> RemoteCommand:
    _transition(cmd, CommandStatus.FAILED, now=now, last_error=error[:300])
    if work_order:
        requested = timezone.localtime(cmd.requested_at)
        description = (
            f"Remote {cmd.action} of meter {meter.asset_number} (address {meter.comm_address}) failed "
            f"after {cmd.attempts} attempt(s); last error: {error}. Requested {requested:%Y-%m-%d %H:%M} "
            f"({cmd.origin}): {cmd.reason}"
        )
        with _dispatch_audit(cmd, worker, "meter.command_failed"):
            FieldWorkOrder.objects.get_or_create(
                command=cmd,
                defaults={"meter": meter, "kind": WORK_ORDER_KIND, "description": description[:500]},
            )
    logger.warning("command_failed", command=cmd.pk, action=cmd.action, error=error, work_order=work_order)
    return cmd


def _time_out(cmd: RemoteCommand, now: datetime, message: str) -> RemoteCommand:
    # Timed out = the need expired (e.g. the customer paid meanwhile): recorded, no work order.
    _transition(cmd, CommandStatus.TIMED_OUT, now=now, last_error=message[:300])
    logger.warning("command_timed_out", command=cmd.pk, action=cmd.action, error=message)
    return cmd


def _lost(claim: _Claim, cmd: RemoteCommand) -> RemoteCommand:
    """This dispatcher no longer owns the command: write nothing about the command. If it
    ended meanwhile (cancelled, superseded) nobody will resume the attempt: close it."""
    if cmd.status in FINAL_COMMAND_STATUSES:
        attempt = CommandAttempt.objects.filter(pk=claim.attempt.pk, finished_at__isnull=True).first()
        if attempt is not None:
            _close_attempt(attempt, timezone.now(), "abandoned", f"the command became {cmd.status} meanwhile")
    logger.warning("command_claim_lost", command=cmd.pk, status=cmd.status, worker=claim.worker)
    return cmd


def _requeue_stale(cmd: RemoteCommand, now: datetime) -> None:
    """A sent command whose dispatcher's lease ran out: its frame may or may not have taken
    effect. Back to the queue; the next attempt reads the meter back before anything else."""
    lease = f"{cmd.lease_until:%Y-%m-%d %H:%M:%S%z}" if cmd.lease_until else "never set"
    _transition(
        cmd,
        CommandStatus.QUEUED,
        now=now,
        lease_until=None,
        next_attempt_at=None,
        last_error=(
            f"the dispatcher's lease ran out ({lease}) while the command was sent: outcome unknown, "
            "to be read back before any resend"
        ),
    )
    logger.warning("command_requeued_stale", command=cmd.pk, action=cmd.action)


# --- the reaper -------------------------------------------------------------------------


def commands_requeue_stale(*, now: datetime | None = None) -> int:
    """Put sent commands whose dispatcher's lease ran out back to the queue (never resent
    blindly: the next dispatch starts with a read-back), and reschedule queued commands
    whose task seems lost. Returns how many commands were rescheduled."""
    now = now or timezone.now()
    with transaction.atomic():
        stale = (
            RemoteCommand.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=CommandStatus.SENT)
            .filter(Q(lease_until__lt=now) | Q(lease_until__isnull=True))
            .order_by("pk")[:REAP_BATCH]
        )
        requeued = []
        for cmd in stale:
            _requeue_stale(cmd, now)
            requeued.append(cmd.pk)
        late = now - REAP_GRACE
        overdue = list(
            RemoteCommand.objects.filter(status=CommandStatus.QUEUED)
            .exclude(pk__in=requeued)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .filter(Q(next_attempt_at__lt=late) | Q(next_attempt_at__isnull=True, queued_at__lt=late))
            .order_by("pk")
            .values_list("pk", flat=True)[:REAP_BATCH]
        )
        for pk in requeued + overdue:
            transaction.on_commit(partial(_schedule_dispatch, pk), robust=True)
    if requeued or overdue:
        logger.warning("commands_reaped", requeued_stale=requeued, rescheduled_overdue=overdue)
    return len(requeued) + len(overdue)


# --- helpers ----------------------------------------------------------------------------


def _schedule_dispatch(command_id: int, *, at: datetime | None = None) -> None:
    """Queue ``command_dispatch_task`` (call through ``transaction.on_commit``)."""
    from metering.tasks import command_dispatch_task  # tasks import this module

    if at is not None and at > timezone.now():
        command_dispatch_task.apply_async((command_id,), eta=at)
    else:
        command_dispatch_task.delay(command_id)


def _lock(claim: _Claim) -> tuple[Meter, RemoteCommand]:
    """Lock the meter, then the command (the fixed order of every command write)."""
    meter = Meter.objects.select_for_update(no_key=True).get(pk=claim.meter.pk)
    cmd = RemoteCommand.objects.select_for_update(no_key=True).get(pk=claim.command.pk)
    return meter, cmd


def _close_attempt(attempt: CommandAttempt, now: datetime, outcome: str, detail: str) -> None:
    attempt.finished_at = now
    attempt.outcome = outcome[:32]
    attempt.detail = _join(attempt.detail, detail)
    attempt.save(update_fields=["finished_at", "outcome", "detail"])


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)[-300:]


def _skipped(cmd: RemoteCommand, why: str, **extra) -> None:
    logger.info("command_dispatch_skipped", command=cmd.pk, status=cmd.status, reason=why, **extra)


def _describe(status: RelayStatus) -> str:
    return (
        f"relay {'open' if status.relay_open else 'closed'}, "
        f"keep-power {'on' if status.keep_power else 'off'}, alarm {'on' if status.alarm else 'off'} "
        f"(status word 3 = {status.raw_status_word:04X}h)"
    )


def _status_json(status: RelayStatus, at: datetime) -> dict:
    return {
        "status_word_3": f"{status.raw_status_word:04X}",
        "relay_open": status.relay_open,
        "keep_power": status.keep_power,
        "alarm": status.alarm,
        "read_at": at.isoformat(),
    }


def _refusal_text(exc: HeadEndError, meter: Meter, action: CommandAction) -> str:
    text = f"the meter refused {action.value}: {exc}"
    if action in (CommandAction.CLOSE, CommandAction.CLOSE_ALLOWED) and (
        meter.cost_control_mode == CostControlMode.LOCAL
    ):
        text += " (a local cost-control meter refuses to close while its own balance is not above zero)"
    return text


def _record_meter_status(meter: Meter, status: RelayStatus, at: datetime) -> None:
    """What the meter reported is the truth about its relay (the caller holds the meter lock
    and an audit context)."""
    meter.relay_state = RelayState.OPEN if status.relay_open else RelayState.CLOSED
    meter.keep_power = status.keep_power
    meter.alarm_on = status.alarm
    meter.relay_state_at = at
    meter.save(update_fields=["relay_state", "keep_power", "alarm_on", "relay_state_at"])


@contextlib.contextmanager
def _dispatch_audit(cmd: RemoteCommand, worker: str, action: str):
    """Changes made by a dispatcher on behalf of whoever requested the command."""
    meta = {
        "action": action,
        "command": cmd.pk,
        "command_action": cmd.action,
        "origin": cmd.origin,
        "reason": cmd.reason,
        "worker": worker,
    }
    if cmd.requested_by_id:
        profile = (
            StaffProfile.objects.select_related("org_unit", "user")
            .filter(user_id=cmd.requested_by_id)
            .first()
        )
        meta["user"] = cmd.requested_by_id
        if profile is not None:
            meta.update(
                username=profile.user.get_username(),
                role=profile.role,
                org_unit=profile.org_unit.code,
                org_unit_name=profile.org_unit.name,
            )
    with audit_context(**meta):
        yield


# --- reads ------------------------------------------------------------------------------


class _Percentile(Aggregate):
    """PostgreSQL ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), output_field=DurationField(), **extra)


def command_latency_stats(qs: QuerySet[RemoteCommand]) -> dict:
    """Requested → confirmed time of the confirmed commands in ``qs``, in seconds:
    ``{"count", "median", "p95", "max"}`` (None without confirmed commands)."""
    confirmed = qs.filter(status=CommandStatus.CONFIRMED, confirmed_at__isnull=False)
    latency = ExpressionWrapper(F("confirmed_at") - F("requested_at"), output_field=DurationField())
    if connection.vendor == "postgresql":
        row = confirmed.aggregate(
            count=Count("pk"),
            median=_Percentile(latency, 0.5),
            p95=_Percentile(latency, 0.95),
            max=Max(latency),
        )
    else:  # the embedded SQLite mode: small tables, sorted in Python
        values = sorted(c - r for c, r in confirmed.values_list("confirmed_at", "requested_at").order_by())
        row = {"count": len(values), "median": None, "p95": None, "max": values[-1] if values else None}
        if values:
            row["median"] = _interpolate(values, 0.5)
            row["p95"] = _interpolate(values, 0.95)
    return {
        "count": row["count"],
        **{
            key: (round(row[key].total_seconds(), 3) if row[key] is not None else None)
            for key in ("median", "p95", "max")
        },
    }


def _interpolate(values: list[timedelta], fraction: float) -> timedelta:
    """Linear interpolation between closest ranks, as percentile_cont does."""
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)
