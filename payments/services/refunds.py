"""Refund of the remaining balance when an account closes.

The clerk refunds first and closes the account after (``customers.services.account_close``),
so the last thing on the ledger of a closed account is the refund that brings it to zero.
The refund is a REFUND entry (negative: money leaves the account) posted with
``allow_closed=True`` so that an account already closed with money left on it can still be
paid out. One refund per account (``Refund.account`` is one-to-one and the ledger key is
``refund:<account id>``). A zero or negative balance has nothing to refund.

The balance refunded is the ledger balance, not the available balance: a credit allowance is
the utility's money. Take the final meter reading (and let it be rated) before refunding, or
consumption rated after the refund will leave the closed account in debt.
"""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext as _

from billing.models import EntryKind, EntrySource
from billing.services.accounts import account_for_actor
from billing.services.ledger import billing_states_lock, ledger_post
from core.audit import audit_context
from core.exceptions import Conflict, ValidationError
from core.money import format_yuan
from core.permissions import Actor, Cap
from payments.models import Method, Refund

REFUND_METHODS = (Method.CASH, Method.TRANSFER)


def refund_remaining_balance(
    *, actor: Actor, account_number: str, method: str, payee: str, bank_account: str = ""
) -> Refund:
    account = account_for_actor(actor=actor, number=account_number, cap=Cap.REFUND)
    payee = (payee or "").strip()
    bank_account = (bank_account or "").replace(" ", "").strip()
    errors: dict[str, list[str]] = {}
    if method not in REFUND_METHODS:
        errors["method"] = [_("A refund is paid in cash or by bank transfer.")]
    if len(payee) < 2:
        errors["payee"] = [_("Who receives the money (the account holder or their agent).")]
    if method == Method.TRANSFER and not (bank_account.isdigit() and 8 <= len(bank_account) <= 40):
        errors["bank_account"] = [_("A bank transfer needs the payee's bank account number (digits).")]
    if errors:
        raise ValidationError(_("Please correct the errors below."), field_errors=errors)

    with (
        transaction.atomic(),
        audit_context(action="refund", user=actor.user_id, username=actor.username),
    ):
        # The account's billing state is locked, so nothing posts between reading the balance
        # and refunding it.
        state = billing_states_lock([account.pk])[account.pk]
        if Refund.objects.filter(account=account).exists():
            raise Conflict(
                _("The balance of account %(number)s was already refunded.") % {"number": account.number},
                code="already_refunded",
            )
        balance = state.balance
        if balance <= 0:
            raise ValidationError(
                _("Account %(number)s has no balance to refund (balance %(balance)s).")
                % {"number": account.number, "balance": format_yuan(balance)},
                code="nothing_to_refund",
            )
        posting = ledger_post(
            account_id=account.pk,
            kind=EntryKind.REFUND,
            amount=-balance,
            source=EntrySource.STAFF,
            idempotency_key=f"refund:{account.pk}",
            description=_("Refund of the remaining balance to %(payee)s") % {"payee": payee},
            source_ref=f"refund:{account.number}",
            created_by_id=actor.user_id,
            details={"method": method, "payee": payee},
            allow_closed=True,
        )
        return Refund.objects.create(
            account=account,
            amount=balance,
            method=method,
            payee=payee[:100],
            bank_account=bank_account[:40] if method == Method.TRANSFER else "",
            entry=posting.entry,
            created_by_id=actor.user_id,
        )
