"""Account-level billing actions: crediting a payment, manual adjustments with a second
person's approval, tariff assignment."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import SimpleNamespace

from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import (
    AccountBilling,
    AccountTariff,
    AdjustmentRequest,
    AdjustmentStatus,
    CostControlPolicy,
    EntryKind,
    EntrySource,
    LedgerEntry,
    PolicyAction,
    PolicyDecision,
    Tariff,
)
from billing.services.ledger import Posting, _amount, billing_states_ensure, billing_states_lock, ledger_post
from billing.services.policy import PolicyTable, policy_evaluate, policy_may_act, policy_quiet_above
from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.permissions import Actor, Cap, org_scope_q
from customers.models import Account, AccountStatus, Customer


def account_for_actor(*, actor: Actor, number: str, cap: Cap = Cap.LEDGER_VIEW) -> Account:
    """The account ``number`` if the actor may act on it, else NotFound (scope) or
    PermissionDenied (role)."""
    if actor is None or not actor.has(cap):
        raise PermissionDenied()
    account = (
        Account.objects.filter(org_scope_q(actor, "customer__org_unit"))
        .select_related("customer", "customer__org_unit")
        .filter(number=number)
        .first()
    )
    if account is None:
        raise NotFound(_("No such account."))
    return account


def _unknown_account(account_number: str) -> NotFound:
    return NotFound(
        _("No account with number %(number)s.") % {"number": account_number or "—"},
        code="unknown_account",
    )


def _refuse_closed(account: Account) -> None:
    if account.status == AccountStatus.CLOSED:
        raise ValidationError(
            _("Account %(number)s is closed and takes no payments.") % {"number": account.number},
            code="account_closed",
        )


def _payment_posting(
    *, account_id, amount, idempotency_key, source_ref, description, created_by_id, now
) -> Posting:
    return ledger_post(
        account_id=account_id,
        kind=EntryKind.PAYMENT,
        amount=amount,
        source=EntrySource.PAYMENT,
        idempotency_key=idempotency_key,
        description=description or _("Payment"),
        source_ref=source_ref,
        created_by_id=created_by_id,
        business_date=timezone.localdate(now) if now else None,
    )


def payment_apply(
    *,
    account_id: int,
    amount,
    idempotency_key: str,
    source_ref: str,
    description: str = "",
    created_by_id: int | None = None,
    now: datetime | None = None,
) -> Posting:
    """Credit a payment to the ledger and let the policy react (a tripped account lifted
    above its close threshold gets exactly one close command, at any hour). Channels
    (payments app) call this with their own idempotency key."""
    with transaction.atomic():
        posting = _payment_posting(
            account_id=account_id,
            amount=amount,
            idempotency_key=idempotency_key,
            source_ref=source_ref,
            description=description,
            created_by_id=created_by_id,
            now=now,
        )
        if posting.created:
            policy_evaluate({account_id: posting.state}, trigger="payment", trigger_ref=source_ref, now=now)
        return posting


@dataclass(frozen=True)
class PaymentCredit:
    """What ``payment_credit`` did, with the figures a payment channel answers with and the
    customer its receipt goes to. ``entry_id`` is None when the idempotency key had been
    used before: nothing was posted."""

    account: Account  # id, number, status and customer_id loaded
    customer: Customer  # name, contact details and notice choices, category and grade loaded
    state: AccountBilling  # after the payment (and any policy decision), still locked
    policy: CostControlPolicy | None  # the policy in force: close threshold, credit allowance
    entry_id: int | None
    decisions: tuple[PolicyDecision, ...]
    # What each of the caller's riders returned (their ``id`` column), in the riders' order;
    # empty when there were no riders or nothing was posted.
    rider_ids: tuple[tuple[int, ...], ...] = ()

    @property
    def created(self) -> bool:
        return self.entry_id is not None

    @property
    def credit_allowance(self) -> Decimal:
        if self.state.credit_allowance is not None:
            return self.state.credit_allowance
        return self.policy.credit_allowance if self.policy is not None else Decimal("0.00")

    @property
    def available_balance(self) -> Decimal:
        return available_balance(self.state.balance, self.credit_allowance)

    @property
    def close_command(self):
        """The close command this payment caused (a tripped account lifted above its close
        threshold), or None."""
        for decision in self.decisions:
            if decision.action == PolicyAction.CLOSE and decision.command_id:
                return decision.command
        return None


@dataclass(frozen=True)
class CreditPreview:
    """The locked account as ``payment_credit`` found it, for the caller to build riders from:
    ``balance_after`` is what the cached balance will be once the credit is posted (the
    account is locked, so nothing else moves it meanwhile)."""

    account: Account
    customer: Customer
    state: AccountBilling  # before the credit
    amount: Decimal
    balance_after: Decimal


@dataclass(frozen=True)
class CreditRider:
    """A data-modifying statement of the caller's (``INSERT … SELECT … FROM e … RETURNING id``)
    run inside the credit's own statement as the common table expression ``name``: one round
    trip to the database for the entry, the balance and what the caller records with them
    (the payment row, its receipts). It reads ``e`` — the new entry's ``id``, ``account_id``
    and ``amount``, no row when the idempotency key had been used — and may read the CTEs of
    the riders before it; ``params`` fill its ``%s`` in order. A rider on ``e`` inserts
    nothing when nothing is posted, so a repeat records nothing twice."""

    name: str
    sql: str
    params: list


_RIDER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def _in_model_order(model, names: list[str]) -> list[str]:
    """``names`` in the order of the model's fields, as ``Model.from_db`` reads a partial row."""
    return [f.attname for f in model._meta.concrete_fields if f.attname in names]


_STATE_FIELDS = [f.attname for f in AccountBilling._meta.concrete_fields]
_STATE_COLUMNS = [f.column for f in AccountBilling._meta.concrete_fields]
_POLICY_FIELDS = _in_model_order(
    CostControlPolicy, ["id", "code", "close_threshold", "credit_allowance", "warning1_threshold"]
)
_ACCOUNT_FIELDS = _in_model_order(Account, ["id", "number", "status", "customer_id"])
_CUSTOMER_FIELDS = _in_model_order(
    Customer,
    [
        "id",
        "name",
        "mobile_phone",
        "email",
        "notify_by_sms",
        "notify_by_email",
        "category",
        "importance_grade",
    ],
)
# One statement: the account, its customer and its billing state, locked, with the policy in
# force (by contract, else the most specific by category and grade, ties to the lowest code:
# billing.services.policy.PolicyTable.for_account) and the highest level-1 warning threshold
# of all policies (policy_quiet_above). Nothing is cached between requests, so an edited
# policy counts from the next payment.
_LOCK_SQL = f"""
SELECT {", ".join(f"a.{c}" for c in _ACCOUNT_FIELDS)},
       {", ".join(f"c.{c}" for c in _CUSTOMER_FIELDS)},
       {", ".join(f"b.{c}" for c in _STATE_COLUMNS)},
       {", ".join(f"p.{c}" for c in _POLICY_FIELDS)},
       (SELECT max(warning1_threshold) FROM billing_costcontrolpolicy)
FROM customers_account a
JOIN customers_customer c ON c.id = a.customer_id
JOIN billing_accountbilling b ON b.account_id = a.id
LEFT JOIN LATERAL (
    SELECT {", ".join(_POLICY_FIELDS)} FROM billing_costcontrolpolicy q
    WHERE CASE WHEN b.policy_id IS NOT NULL THEN q.id = b.policy_id
               ELSE (q.category = '' OR q.category = c.category)
                    AND (q.importance_grade = '' OR q.importance_grade = c.importance_grade) END
    ORDER BY (CASE WHEN q.importance_grade <> '' THEN 2 ELSE 0 END
              + CASE WHEN q.category <> '' THEN 1 ELSE 0 END) DESC, q.code COLLATE "C"
    LIMIT 1
) p ON true
WHERE a.number = %s
FOR NO KEY UPDATE OF b
"""  # noqa: S608 (column names from the models; values are bound)
_ENTRY_FIELDS = [f for f in LedgerEntry._meta.concrete_fields if not f.primary_key]
# The entry, once per idempotency key (a key already used inserts nothing, and waits for a
# concurrent transaction holding it), and the cached balance moved by the same amount, in
# one statement; the account's billing state is locked before.
_CREDIT_SQL = f"""
WITH e AS (
    INSERT INTO billing_ledgerentry ({", ".join(f.column for f in _ENTRY_FIELDS)})
    VALUES ({", ".join(["%s"] * len(_ENTRY_FIELDS))})
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, account_id, amount
), u AS (
    UPDATE billing_accountbilling b SET balance = b.balance + e.amount
    FROM e WHERE b.account_id = e.account_id
    RETURNING b.balance
)
SELECT e.id, u.balance FROM e CROSS JOIN u
"""  # noqa: S608 (column names from the models; values are bound)


def _credit_sql(riders: list[CreditRider]) -> str:
    if not riders:
        return _CREDIT_SQL
    names = [r.name for r in riders]
    if len(set(names)) != len(names) or any(not _RIDER_NAME.match(n) or n in ("e", "u") for n in names):
        raise ValueError(f"rider names must be distinct lower-case identifiers other than e and u: {names}")
    head, tail = _CREDIT_SQL.rsplit("SELECT e.id, u.balance FROM e CROSS JOIN u", 1)
    # The riders' names are checked above and their SQL is the caller's code (values bound).
    ctes = "".join(f",\n{r.name} AS (\n{r.sql}\n)" for r in riders)
    arrays = "".join(f", ARRAY(SELECT id FROM {r.name})" for r in riders)  # noqa: S608
    return f"{head.rstrip()}{ctes}\nSELECT e.id, u.balance{arrays} FROM e CROSS JOIN u{tail}"


def _from_row(model, names: list[str], values):
    return model.from_db(connection.alias, names, list(values))


def _lock_for_payment(account_number: str):
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL, [account_number])
        return cursor.fetchone()


def payment_credit(
    *,
    account_number: str,
    amount: Decimal,
    idempotency_key: str,
    source_ref: str,
    description: str,
    created_by_id: int | None = None,
    now: datetime | None = None,
    riders: Callable[[CreditPreview], list[CreditRider]] | None = None,
) -> PaymentCredit:
    """Credit a payment to account ``account_number``, once per ``idempotency_key``, and let
    the policy react: ``payment_apply`` in the fewest statements, for the payment channels'
    hot path. Runs in the caller's transaction (opens one if there is none).

    Statements: the account with its customer, billing state (locked) and policy in one
    SELECT; the entry and the balance (and the caller's riders) in one INSERT … ON CONFLICT
    DO NOTHING + UPDATE. The policy is evaluated only when it could decide something
    (``policy_may_act``: an account in state normal well above every warning threshold
    cannot get a decision), so a payment to a tripped or warned account still gets exactly
    one close, under the lock.

    ``riders`` (PostgreSQL only): called once the account is locked, with a ``CreditPreview``;
    the ``CreditRider`` statements it returns run in the credit's statement (what they
    return is ``rider_ids``), so a channel's own rows cost no further round trip.

    NotFound (``unknown_account``) / ValidationError (``account_closed``) post nothing."""
    amount = _amount(amount)
    if amount <= 0:
        raise ValidationError(_("A payment must be positive."))
    if not idempotency_key:
        raise ValidationError(_("A posting needs an idempotency key."))
    now_ = now or timezone.now()
    if connection.vendor != "postgresql":
        if riders is not None:
            raise ValueError("credit riders need PostgreSQL")
        return _payment_credit_portable(
            account_number=account_number,
            amount=amount,
            idempotency_key=idempotency_key,
            source_ref=source_ref,
            description=description,
            created_by_id=created_by_id,
            now=now,
        )
    with transaction.atomic(savepoint=False):
        row = _lock_for_payment(account_number)
        if row is None:
            account_id = Account.objects.filter(number=account_number).values_list("pk", flat=True).first()
            if account_id is None:
                raise _unknown_account(account_number)
            billing_states_ensure([account_id])
            row = _lock_for_payment(account_number)
        n_a, n_c, n_s, n_p = (
            len(_ACCOUNT_FIELDS),
            len(_CUSTOMER_FIELDS),
            len(_STATE_FIELDS),
            len(_POLICY_FIELDS),
        )
        account = _from_row(Account, _ACCOUNT_FIELDS, row[:n_a])
        customer = _from_row(Customer, _CUSTOMER_FIELDS, row[n_a : n_a + n_c])
        state = _from_row(AccountBilling, _STATE_FIELDS, row[n_a + n_c : n_a + n_c + n_s])
        policy_row = row[n_a + n_c + n_s : n_a + n_c + n_s + n_p]
        policy = _from_row(CostControlPolicy, _POLICY_FIELDS, policy_row) if policy_row[0] else None
        quiet_above = row[-1]
        _refuse_closed(account)
        entry = LedgerEntry(
            account_id=account.pk,
            kind=EntryKind.PAYMENT,
            amount=amount,
            business_date=timezone.localdate(now_),
            description=(description or _("Payment"))[:200],
            source=EntrySource.PAYMENT,
            source_ref=source_ref[:64],
            idempotency_key=idempotency_key,
            created_by_id=created_by_id,
            created_at=now_,
        )
        params = [f.get_db_prep_save(f.pre_save(entry, True), connection) for f in _ENTRY_FIELDS]
        ride = []
        if riders is not None:
            ride = riders(CreditPreview(account, customer, state, amount, state.balance + amount))
            for rider in ride:
                params.extend(rider.params)
        with connection.cursor() as cursor:
            cursor.execute(_credit_sql(ride), params)
            credited = cursor.fetchone()
        if credited is None:  # the caller looks up what the key posted before
            return PaymentCredit(account, customer, state, policy, None, ())
        entry_id, state.balance = credited[:2]
        rider_ids = tuple(tuple(ids) for ids in credited[2:])
        decisions: tuple[PolicyDecision, ...] = ()
        if policy_may_act(
            state.balance, state.credit_allowance, state.state, state.withheld_reason, quiet_above
        ):
            decisions = tuple(
                policy_evaluate({account.pk: state}, trigger="payment", trigger_ref=source_ref, now=now)
            )
        return PaymentCredit(account, customer, state, policy, entry_id, decisions, rider_ids)


def _payment_credit_portable(
    *, account_number, amount, idempotency_key, source_ref, description, created_by_id, now
) -> PaymentCredit:
    """``payment_credit`` in the embedded mode (SQLite, whose writes are serialised): the
    same checks and result through the ORM (``ledger_post``, the policy table)."""
    with transaction.atomic():
        account = (
            Account.objects.select_related("customer")
            .only(*_ACCOUNT_FIELDS, *(f"customer__{name}" for name in _CUSTOMER_FIELDS))
            .filter(number=account_number)
            .first()
        )
        if account is None:
            raise _unknown_account(account_number)
        _refuse_closed(account)
        customer = account.customer
        try:
            posting = _payment_posting(
                account_id=account.pk,
                amount=amount,
                idempotency_key=idempotency_key,
                source_ref=source_ref,
                description=description,
                created_by_id=created_by_id,
                now=now,
            )
        except Conflict:  # the key posted something else: the caller says what
            posting = None
        state = posting.state if posting is not None else billing_states_lock([account.pk])[account.pk]
        governed = SimpleNamespace(category=customer.category, grade=customer.importance_grade)
        policy = PolicyTable().for_account(state, governed)
        if posting is None or not posting.created:
            return PaymentCredit(account, customer, state, policy, None, ())
        decisions: tuple[PolicyDecision, ...] = ()
        if policy_may_act(
            state.balance, state.credit_allowance, state.state, state.withheld_reason, policy_quiet_above()
        ):
            decisions = tuple(
                policy_evaluate({account.pk: state}, trigger="payment", trigger_ref=source_ref, now=now)
            )
        return PaymentCredit(account, customer, state, policy, posting.entry.pk, decisions)


def adjustment_request(*, actor: Actor, account_number: str, amount, reason: str) -> AdjustmentRequest:
    account = account_for_actor(actor=actor, number=account_number, cap=Cap.ADJUSTMENT_REQUEST)
    amount = _amount(amount)
    reason = (reason or "").strip()
    if len(reason) < 4:
        raise ValidationError(
            _("Say why the account is adjusted (at least a few words)."),
            field_errors={"reason": [_("Required.")]},
        )
    with audit_context(action="adjustment_request", user=actor.user_id, username=actor.username):
        return AdjustmentRequest.objects.create(
            account=account, amount=amount, reason=reason[:300], requested_by_id=actor.user_id
        )


def adjustment_decide(
    *, actor: Actor, adjustment_id: int, approve: bool, note: str = ""
) -> AdjustmentRequest:
    """Approve (posts the entry) or reject a pending adjustment. Never one's own request."""
    if actor is None or not actor.has(Cap.ADJUSTMENT_APPROVE):
        raise PermissionDenied(_("You are not allowed to approve adjustments."))
    with (
        transaction.atomic(),
        audit_context(
            action="adjustment_approve" if approve else "adjustment_reject",
            user=actor.user_id,
            username=actor.username,
        ),
    ):
        adj = (
            AdjustmentRequest.objects.select_for_update()
            .select_related("account", "account__customer__org_unit")
            .filter(pk=adjustment_id)
            .first()
        )
        if (
            adj is None
            or not Account.objects.filter(
                org_scope_q(actor, "customer__org_unit"), pk=adj.account_id
            ).exists()
        ):
            raise NotFound(_("No such adjustment."))
        if adj.requested_by_id == actor.user_id:
            raise PermissionDenied(
                _("An adjustment must be approved by someone other than the person who requested it."),
                code="four_eyes",
            )
        if adj.status != AdjustmentStatus.PENDING:
            raise Conflict(_("This adjustment was already decided."), code="already_decided")
        now = timezone.now()
        adj.status = AdjustmentStatus.APPROVED if approve else AdjustmentStatus.REJECTED
        adj.decided_by_id = actor.user_id
        adj.decided_at = now
        adj.decision_note = (note or "").strip()[:300]
        if approve:
            posting = ledger_post(
                account_id=adj.account_id,
                kind=EntryKind.ADJUSTMENT,
                amount=adj.amount,
                source=EntrySource.STAFF,
                idempotency_key=f"adjustment:{adj.pk}",
                description=_("Adjustment: %(reason)s") % {"reason": adj.reason},
                source_ref=f"adjustment:{adj.pk}",
                created_by_id=actor.user_id,
                details={"requested_by": adj.requested_by_id, "approved_by": actor.user_id},
            )
            adj.entry = posting.entry
            adj.save()
            policy_evaluate(
                {adj.account_id: posting.state},
                trigger="adjustment",
                trigger_ref=f"adjustment:{adj.pk}",
                now=now,
            )
        else:
            adj.save()
        return adj


def tariff_assign(*, account: Account, tariff: Tariff, effective_from: date) -> AccountTariff:
    if effective_from < account.opened_on:
        raise ValidationError(_("A tariff cannot start before the account was opened."))
    obj, _created = AccountTariff.objects.update_or_create(
        account=account, effective_from=effective_from, defaults={"tariff": tariff}
    )
    return obj


def available_balance(balance: Decimal, credit_allowance: Decimal) -> Decimal:
    return balance + credit_allowance
