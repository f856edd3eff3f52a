"""Reads of the customer register, scoped to what the actor may see."""

import re

from django.db.models import Prefetch, Q, QuerySet

from core.exceptions import NotFound, PermissionDenied
from core.permissions import Actor, Cap, org_scope_q
from customers.models import Account, Contact, Customer, ServicePoint

_DIGITS = re.compile(r"^\d+$")


def customers_visible_to(actor: Actor) -> QuerySet[Customer]:
    if actor is None or not actor.has(Cap.CUSTOMER_VIEW):
        raise PermissionDenied()
    return Customer.objects.filter(org_unit_scope(actor)).select_related("org_unit")


def org_unit_scope(actor: Actor) -> Q:
    return org_scope_q(actor, "org_unit")


def customer_search(*, actor: Actor, query: str = "", category: str = "") -> QuerySet[Customer]:
    """Find customers by customer or account number, phone, name or address.

    A query of digits matches numbers and phones by prefix (indexed); anything else matches
    name and address by substring (trigram-indexed on PostgreSQL).
    """
    qs = customers_visible_to(actor)
    query = (query or "").strip()
    if category:
        qs = qs.filter(category=category)
    if not query:
        return qs.order_by("number")
    compact = query.replace(" ", "").replace("-", "")
    if compact.startswith("+86"):
        compact = compact[3:]
    if _DIGITS.match(compact):
        # One indexed query per kind of number, united in Python: an OR across the joined
        # tables would defeat every index at a million customers.
        limit = 2000
        ids = set(Customer.objects.filter(number__startswith=compact).values_list("pk", flat=True)[:limit])
        ids.update(
            Account.objects.filter(number__startswith=compact).values_list("customer_id", flat=True)[:limit]
        )
        ids.update(
            Customer.objects.filter(mobile_phone__startswith=f"+86{compact}").values_list("pk", flat=True)[
                :limit
            ]
        )
        ids.update(ServicePoint.objects.filter(number=compact).values_list("customer_id", flat=True)[:limit])
        if len(compact) >= 4:
            ids.update(
                Customer.objects.filter(
                    Q(mobile_phone__endswith=compact) | Q(other_phone__contains=compact)
                ).values_list("pk", flat=True)[:limit]
            )
        return qs.filter(pk__in=ids).order_by("number")
    terms = query.split()
    for term in terms:
        qs = qs.filter(Q(name__icontains=term) | Q(address__icontains=term))
    return qs.order_by("number")


def customer_get(*, actor: Actor, number: str) -> Customer:
    """One customer with everything the detail page shows, or NotFound when it does not
    exist or lies outside the actor's scope (the two are indistinguishable on purpose)."""
    try:
        return (
            customers_visible_to(actor)
            .prefetch_related(
                Prefetch("accounts", queryset=Account.objects.order_by("number")),
                Prefetch(
                    "service_points",
                    queryset=ServicePoint.objects.select_related(
                        "account", "transformer_area", "transformer_area__supply_station"
                    ).order_by("number"),
                ),
                # Meters are metering's; named by relation only, so customers imports nothing of it.
                "service_points__meters",
                Prefetch("contacts", queryset=Contact.objects.order_by("role", "name")),
            )
            .get(number=number)
        )
    except Customer.DoesNotExist:
        raise NotFound() from None


def customer_history(*, actor: Actor, customer: Customer):
    """Audit events of the customer and its accounts, service points and contacts, newest
    first, each with the before/after diff and the context (who, where, hall)."""
    if not actor.has(Cap.CUSTOMER_VIEW):
        raise PermissionDenied()
    from django.db import connection
    from pghistory.models import Events

    if connection.vendor != "postgresql":
        # The trail is written by PostgreSQL triggers; the embedded SQLite mode has none.
        return Events.objects.none()
    return Events.objects.references(customer).order_by("-pgh_created_at")
