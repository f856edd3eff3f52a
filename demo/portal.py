"""The demo utility's customer portal: sign-ins for a few demo customers (one of them warned
or tripped for low balance, when the demo has one), made through the portal's own services.
Their password is random and printed once; none is kept in the repository. One more customer
is printed without a sign-in, to try the sign-up (the code lands in the notification outbox)."""

from __future__ import annotations

import secrets
import sys

from django.core.exceptions import ValidationError as DjangoValidationError

from billing.models import AccountBilling, CostControlState
from customers.models import AccountStatus, Customer, CustomerStatus, SettlementMode
from portal.models import PortalProfile
from portal.services.auth import accounts_bind, portal_phone, portal_user_create

SIGN_INS = 3


def _candidates():
    """Active customers with an open account, in a fixed order: first the warned or tripped
    prepaid ones, then other prepaid, then post-paid."""
    base = Customer.objects.filter(
        status=CustomerStatus.ACTIVE, accounts__status=AccountStatus.OPEN
    ).distinct()
    troubled = set(
        AccountBilling.objects.filter(
            state__in=[CostControlState.WARNING1, CostControlState.WARNING2, CostControlState.TRIPPED],
            account__status=AccountStatus.OPEN,
        ).values_list("account__customer_id", flat=True)[:50]
    )
    ordered = list(base.filter(pk__in=troubled).order_by("number")[:1])
    ordered += list(
        base.filter(accounts__settlement_mode=SettlementMode.PREPAID)
        .exclude(pk__in=troubled)
        .order_by("number")[:5]
    )
    ordered += list(base.filter(accounts__settlement_mode=SettlementMode.POSTPAID).order_by("number")[:5])
    return ordered


def _state(account) -> str:
    billing = AccountBilling.objects.filter(account=account).first()
    return billing.state if billing is not None else account.settlement_mode


def load_portal(stdout=None) -> list:
    """Create up to three portal sign-ins for demo customers and print their password once.
    Returns the users. Does nothing for customers whose phone already signs in."""
    out = stdout if stdout is not None else sys.stdout
    password = secrets.token_urlsafe(9)
    users, used_phones, spare = [], set(PortalProfile.objects.values_list("mobile_phone", flat=True)), None
    for customer in _candidates():
        try:
            phone = portal_phone(customer.mobile_phone)
        except DjangoValidationError:  # not a mobile number: skip the customer
            continue
        if phone in used_phones:
            continue
        if len(users) == SIGN_INS:
            spare = (customer, phone)
            break
        user = portal_user_create(phone=phone, password=password)
        accounts = accounts_bind(user=user, customer=customer)
        used_phones.add(phone)
        users.append((user, customer, accounts))
    if not users:
        out.write("portal: no demo customer to sign in\n")
        return []
    out.write(f"portal sign-ins at /portal/login/ (password for all, shown once): {password}\n")
    for user, customer, accounts in users:
        states = ", ".join(f"{account.number} {_state(account)}" for account in accounts)
        out.write(f"  {user.username}  customer {customer.number} {customer.name}: {states}\n")
    if spare is not None:
        customer, phone = spare
        out.write(
            f"  to try sign-up at /portal/signup/: customer {customer.number}, ID ending "
            f"{customer.id_number_masked[-4:]}, phone {phone} (the code is in the notification outbox)\n"
        )
    return [user for user, _customer, _accounts in users]
