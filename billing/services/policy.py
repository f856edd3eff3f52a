"""Applying the cost-control policy (DESIGN.md flow 2 and 3, §5).

``billing.policy.rules.decide`` is the pure rule; this module loads what it needs, calls it
for accounts whose billing state the caller has locked, and carries the decision out inside
the caller's transaction: the new state, a ``PolicyDecision`` row with the figures, the
customer's notifications (outbox) and the remote commands (``metering.services.commands``,
dispatched after commit). Because the state changes under the account lock, a close is
decided once per trip however many payments arrive at the same moment.

Only prepaid accounts with a remote cost-control meter are governed here; local
cost-control meters trip themselves and post-paid accounts are dunned by bill runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from billing.models import (
    AccountBilling,
    CostControlPolicy,
    CostControlState,
    NoTripEvent,
    PolicyAction,
    PolicyDecision,
)
from billing.policy.rules import Decision, NoTripWindows, PolicySettings, PolicyState, decide
from core.money import format_yuan, quantize_yuan
from core.services.notifications import customer_channels, notifications_enqueue_many
from customers.models import Account, SettlementMode
from metering.models import CommandAction, CommandOrigin, CostControlMode, Meter, MeterStatus
from metering.services.commands import commands_request_many

logger = structlog.get_logger(__name__)

STATE_AFTER = {
    PolicyAction.WARN1: CostControlState.WARNING1,
    PolicyAction.WARN2: CostControlState.WARNING2,
    PolicyAction.TRIP: CostControlState.TRIPPED,
    PolicyAction.CLOSE: CostControlState.NORMAL,
    PolicyAction.RECOVER: CostControlState.NORMAL,
}


@dataclass(frozen=True)
class _Governed:
    """What the policy needs to know about an account besides its billing state."""

    account_id: int
    account_number: str
    customer_id: int
    customer_name: str
    mobile_phone: str
    email: str
    by_sms: bool
    by_email: bool
    category: str
    grade: str
    protected: bool
    meter_ids: tuple[int, ...]


def _governed(account_ids: list[int]) -> dict[int, _Governed]:
    """Prepaid accounts among ``account_ids`` with their remote cost-control meters."""
    accounts = (
        Account.objects.filter(pk__in=account_ids, settlement_mode=SettlementMode.PREPAID)
        .select_related("customer")
        .only(
            "pk",
            "number",
            "customer__id",
            "customer__name",
            "customer__mobile_phone",
            "customer__email",
            "customer__notify_by_sms",
            "customer__notify_by_email",
            "customer__category",
            "customer__importance_grade",
            "customer__protected",
        )
    )
    meters: dict[int, list[int]] = defaultdict(list)
    rows = Meter.objects.filter(
        installations__service_point__account_id__in=account_ids,
        installations__removed_at__isnull=True,
        status=MeterStatus.INSTALLED,
        cost_control_mode=CostControlMode.REMOTE,
    ).values_list("installations__service_point__account_id", "pk")
    for account_id, meter_id in rows:
        meters[account_id].append(meter_id)
    result = {}
    for a in accounts:
        if not meters.get(a.pk):
            continue
        c = a.customer
        result[a.pk] = _Governed(
            account_id=a.pk,
            account_number=a.number,
            customer_id=c.pk,
            customer_name=c.name,
            mobile_phone=c.mobile_phone,
            email=c.email,
            by_sms=c.notify_by_sms,
            by_email=c.notify_by_email,
            category=c.category,
            grade=c.importance_grade,
            protected=c.protected,
            meter_ids=tuple(sorted(meters[a.pk])),
        )
    return result


class PolicyTable:
    """The policy table, loaded once per evaluation; picks the most specific match."""

    def __init__(self):
        self.by_id = {p.pk: p for p in CostControlPolicy.objects.all()}

    def for_account(self, state: AccountBilling, governed: _Governed) -> CostControlPolicy | None:
        if state.policy_id:
            return self.by_id.get(state.policy_id)
        best, best_score = None, -1
        for p in self.by_id.values():
            if p.category and p.category != governed.category:
                continue
            if p.importance_grade and p.importance_grade != governed.grade:
                continue
            score = (2 if p.importance_grade else 0) + (1 if p.category else 0)
            if score > best_score or (score == best_score and best is not None and p.code < best.code):
                best, best_score = p, score
        return best


def _windows(policy: CostControlPolicy, events: tuple) -> NoTripWindows:
    return NoTripWindows(
        night_start=policy.night_start,
        night_end=policy.night_end,
        holidays=policy.no_trip_on_holidays,
        events=events,
    )


def _settings(policy: CostControlPolicy) -> PolicySettings:
    return PolicySettings(
        warning1_threshold=policy.warning1_threshold,
        warning2_threshold=policy.warning2_threshold,
        trip_threshold=policy.trip_threshold,
        close_threshold=policy.close_threshold,
        required_warning=policy.required_warning,
        grace_period=timedelta(hours=float(policy.grace_hours)),
    )


def _events(now: datetime) -> tuple:
    rows = NoTripEvent.objects.filter(ends_at__gt=now - timedelta(days=1)).values_list(
        "starts_at", "ends_at", "name"
    )
    return tuple(rows)


def credit_allowance_of(state: AccountBilling, policy: CostControlPolicy | None) -> Decimal:
    if state.credit_allowance is not None:
        return state.credit_allowance
    return policy.credit_allowance if policy is not None else Decimal("0.00")


def policy_quiet_above() -> Decimal | None:
    """The highest level-1 warning threshold of any policy (None without policies): an
    account in state normal, with no withheld trip on record, whose balance plus a
    non-negative credit allowance is above it, cannot get any decision (see ``policy_may_act``)."""
    return CostControlPolicy.objects.aggregate(m=Max("warning1_threshold"))["m"]


def policy_may_act(
    balance: Decimal, credit_allowance: Decimal | None, state: str, withheld_reason: str, quiet_above
) -> bool:
    """False when no policy could decide anything for an account with these figures, so
    callers can leave it out before loading anything: state normal and nothing withheld,
    and an available balance (at least ``balance``, since a credit allowance is never
    negative) above every policy's level-1 warning threshold. ``decide`` then answers
    ``none`` whatever the policy (every threshold is at or below warning level 1)."""
    if state != CostControlState.NORMAL or withheld_reason or quiet_above is None:
        return True
    if credit_allowance is not None:
        if credit_allowance < 0:
            return True  # let decide() reject it, as before
        balance += credit_allowance
    return balance <= quiet_above


def policy_evaluate(
    states: dict[int, AccountBilling],
    *,
    trigger: str,
    trigger_ref: str = "",
    now: datetime | None = None,
) -> list[PolicyDecision]:
    """Decide for every account in ``states`` (locked by the caller, balances current) and
    carry the decisions out. Returns the decisions recorded. Accounts for which no decision
    is possible (``policy_may_act``) are left out before anything is loaded."""
    if not states:
        return []
    assert transaction.get_connection().in_atomic_block, "policy_evaluate needs the caller's transaction"
    now = now or timezone.now()
    quiet_above = policy_quiet_above()
    states = {
        a: s
        for a, s in states.items()
        if policy_may_act(s.balance, s.credit_allowance, s.state, s.withheld_reason, quiet_above)
    }
    if not states:
        return []
    governed = _governed(list(states))
    if not governed:
        return []
    policies = PolicyTable()
    events = _events(now)
    decided: list[tuple[AccountBilling, _Governed, Decision]] = []
    for account_id in sorted(governed):
        state = states[account_id]
        info = governed[account_id]
        policy = policies.for_account(state, info)
        if policy is None:
            logger.warning("no_cost_control_policy", account_id=account_id)
            continue
        allowance = credit_allowance_of(state, policy)
        decision = decide(
            balance=state.balance,
            credit_allowance=allowance,
            settings=_settings(policy),
            state=PolicyState(
                state=state.state,
                warning1_at=state.warning1_at,
                warning2_at=state.warning2_at,
                tripped_at=state.tripped_at,
                protected=info.protected,
            ),
            now=now,
            windows=_windows(policy, events),
        )
        if decision.action != PolicyAction.NONE:
            decided.append((state, info, decision))
    return _carry_out(decided, trigger=trigger, trigger_ref=trigger_ref, now=now)


def _carry_out(
    decided: list[tuple[AccountBilling, _Governed, Decision]],
    *,
    trigger: str,
    trigger_ref: str,
    now: datetime,
) -> list[PolicyDecision]:
    """Carry the decisions out: the new states (one UPDATE), the remote commands, the
    decision rows (one INSERT) and the customers' notifications."""
    carried: list[tuple[AccountBilling, _Governed, Decision, str, str, str]] = []
    # Accounts whose state fields change the same way are updated together.
    updates: dict[tuple, list[int]] = defaultdict(list)
    for state, info, decision in decided:
        action = PolicyAction(decision.action)
        if action == PolicyAction.TRIP_WITHHELD:
            # Recorded when the reason changes, not at every rating of a withheld account.
            reason = ",".join(decision.blocked_by) or decision.reason
            if state.withheld_reason == reason:
                continue
            state.withheld_reason = reason[:100]
            updates[(("withheld_reason", state.withheld_reason),)].append(state.pk)
            carried.append((state, info, decision, action, state.state, state.state))
            continue
        before = state.state
        after = STATE_AFTER[action]
        changes = {"state": after, "state_changed_at": now, "withheld_reason": ""}
        if action == PolicyAction.WARN1:
            changes["warning1_at"] = now
        elif action == PolicyAction.WARN2:
            changes["warning2_at"] = now
            if state.warning1_at is None:
                changes["warning1_at"] = now
        elif action == PolicyAction.TRIP:
            changes["tripped_at"] = now
        elif action in (PolicyAction.CLOSE, PolicyAction.RECOVER):
            changes.update(warning1_at=None, warning2_at=None, tripped_at=None)
        for name, value in changes.items():
            setattr(state, name, value)
        updates[tuple(changes.items())].append(state.pk)
        carried.append((state, info, decision, action, before, after))
    if not carried:
        return []
    stamp = timezone.now()
    for changes, account_ids in updates.items():
        AccountBilling.objects.filter(pk__in=account_ids).update(**dict(changes), updated_at=stamp)

    # Commands first, so the (append-only) decision rows name their commands; all of this
    # evaluation's together. The accounts are locked and their states already changed, so a
    # decision happens once; the keys only guard against the same transaction being replayed.
    requests, keys_of = [], {}
    for _state, info, decision, action, _before, _after in carried:
        if action in (PolicyAction.TRIP, PolicyAction.CLOSE):
            command_action = CommandAction.TRIP if action == PolicyAction.TRIP else CommandAction.CLOSE
            keys = []
            for meter_id in info.meter_ids:
                key = f"policy:{info.account_id}:{action}:{now.timestamp():.6f}:{meter_id}"
                requests.append((meter_id, command_action, decision.message[:200], key))
                keys.append(key)
            keys_of[info.account_id] = keys
    commands = commands_request_many(requests, origin=CommandOrigin.POLICY) if requests else {}
    rows = []
    for state, info, decision, _action, before, after in carried:
        keys = keys_of.get(info.account_id)
        first = commands[keys[0]] if keys else None
        rows.append(_record(state, info, decision, trigger, trigger_ref, now, before, after, command=first))
    rows = PolicyDecision.objects.bulk_create(rows, batch_size=500)
    # The customers' notifications go into the outbox together (one INSERT, one delivery
    # task after commit), in this transaction.
    notifications = []
    for (state, info, _decision, action, _before, _after), row in zip(carried, rows, strict=True):
        if action not in (PolicyAction.RECOVER, PolicyAction.TRIP_WITHHELD):
            notifications.extend(_notifications(info, state, action, row))
    notifications_enqueue_many(notifications)
    return rows


def _record(
    state, info, decision: Decision, trigger, trigger_ref, now, before, after, command=None
) -> PolicyDecision:
    """The decision row (unsaved: the caller inserts the rows together)."""
    return PolicyDecision(
        command=command,
        account_id=info.account_id,
        action=decision.action,
        reason=decision.reason[:40],
        message=decision.message[:300],
        numbers=dict(decision.numbers),
        blocked_by=list(decision.blocked_by),
        trigger=trigger[:16],
        trigger_ref=trigger_ref[:64],
        state_before=before,
        state_after=after,
        decided_at=now,
    )


def _notifications(info: _Governed, state: AccountBilling, action: str, row: PolicyDecision) -> list[dict]:
    """What to tell the customer, in the utility's language (SMS, portal and e-mail), as
    items for ``notifications_enqueue_many``."""
    with translation.override(settings.LANGUAGE_CODE):
        figures = {
            "name": info.customer_name,
            "account": info.account_number,
            "balance": format_yuan(quantize_yuan(state.balance)),
        }
        topic, body = {
            PolicyAction.WARN1: (
                "low_balance_1",
                _("Dear %(name)s, the balance of account %(account)s is %(balance)s. Please top up soon.")
                % figures,
            ),
            PolicyAction.WARN2: (
                "low_balance_2",
                _(
                    "Dear %(name)s, the balance of account %(account)s is %(balance)s and power will be "
                    "cut when it runs out. Please top up now."
                )
                % figures,
            ),
            PolicyAction.TRIP: (
                "trip",
                _(
                    "Dear %(name)s, power to account %(account)s has been cut for arrears "
                    "(balance %(balance)s)."
                )
                % figures,
            ),
            PolicyAction.CLOSE: (
                "restore",
                _(
                    "Dear %(name)s, thank you for your payment. "
                    "Power to account %(account)s is being restored."
                )
                % figures,
            ),
            PolicyAction.TRIP_WITHHELD: (None, ""),
        }[action]
    if topic is None:
        return []
    channels = customer_channels(
        mobile_phone=info.mobile_phone, email=info.email, by_sms=info.by_sms, by_email=info.by_email
    )
    items = []
    for channel, recipient in channels:
        items.append(
            dict(
                channel=channel,
                topic=topic,
                body=body,
                subject=body[:60] if channel == "email" else "",
                recipient=recipient,
                customer_id=info.customer_id,
                account_id=info.account_id,
                dedupe_key=f"policy:{row.pk}:{channel}",
            )
        )
    return items


def policy_sweep(*, now: datetime | None = None, limit: int = 5000) -> int:
    """Re-decide the accounts a rating alone would not revisit: warned accounts whose trip
    was withheld (night, holiday, grace) and tripped accounts above their close threshold
    (e.g. after an approved adjustment). Returns the number of decisions recorded."""
    from billing.services.ledger import billing_states_lock

    candidates = list(
        AccountBilling.objects.filter(
            Q(state__in=[CostControlState.WARNING1, CostControlState.WARNING2, CostControlState.TRIPPED])
            | ~Q(withheld_reason="")
        )
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    recorded = 0
    for start in range(0, len(candidates), 500):
        with transaction.atomic():
            states = billing_states_lock(candidates[start : start + 500])
            recorded += len(policy_evaluate(states, trigger="sweep", now=now))
    return recorded
