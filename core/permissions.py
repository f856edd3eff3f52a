"""Who may do what, and where. The single source of role and org-unit scope rules.

- Counter staff serve any customer at any hall (cross-region business); each such
  action is audited with the hall where it happened.
- Inspectors and managers act within their org unit's subtree.
- Auditors read everything and change nothing.
- Administrators may do everything.
"""

from dataclasses import dataclass
from enum import StrEnum

from django.db.models import Q

from core.exceptions import PermissionDenied
from core.models import OrgUnit, Role


class Cap(StrEnum):
    CUSTOMER_VIEW = "customer.view"
    CUSTOMER_CREATE = "customer.create"
    CUSTOMER_CHANGE = "customer.change"
    AUDIT_VIEW = "audit.view"
    METER_VIEW = "meter.view"
    METER_CONTROL = "meter.control"  # manual trip / close / keep-power with a reason
    COLLECTION_VIEW = "collection.view"
    # Post reading batches (external collection systems); granted to no role but ADMIN.
    READINGS_INGEST = "readings.ingest"
    LEDGER_VIEW = "ledger.view"  # balances, ledger, policy decisions, tariffs
    ADJUSTMENT_REQUEST = "adjustment.request"
    ADJUSTMENT_APPROVE = "adjustment.approve"  # never one's own request (four eyes)
    TARIFF_QUOTE = "tariff.quote"
    PAYMENT_VIEW = "payment.view"  # payment history, receipts, latency figures
    PAYMENT_TAKE = "payment.take"  # take payments at the counter, sell vouchers, own shift
    REVERSAL_REQUEST = "reversal.request"
    REVERSAL_APPROVE = "reversal.approve"  # never one's own request (four eyes)
    BANK_RECONCILE = "bank.reconcile"  # import bank files, clear reconciliation items
    VOUCHER_MANAGE = "voucher.manage"  # issue and void voucher batches
    REFUND = "refund.make"  # refund the remaining balance of a closing account


ROLE_CAPABILITIES: dict[str, frozenset[Cap]] = {
    Role.COUNTER: frozenset(
        {
            Cap.CUSTOMER_VIEW,
            Cap.CUSTOMER_CREATE,
            Cap.CUSTOMER_CHANGE,
            Cap.METER_VIEW,
            Cap.LEDGER_VIEW,
            Cap.ADJUSTMENT_REQUEST,
            Cap.TARIFF_QUOTE,
            Cap.PAYMENT_VIEW,
            Cap.PAYMENT_TAKE,
            Cap.REVERSAL_REQUEST,
            Cap.REFUND,
        }
    ),
    Role.INSPECTOR: frozenset(
        {Cap.CUSTOMER_VIEW, Cap.METER_VIEW, Cap.COLLECTION_VIEW, Cap.LEDGER_VIEW, Cap.TARIFF_QUOTE}
    ),
    Role.AUDITOR: frozenset(
        {
            Cap.CUSTOMER_VIEW,
            Cap.AUDIT_VIEW,
            Cap.METER_VIEW,
            Cap.COLLECTION_VIEW,
            Cap.LEDGER_VIEW,
            Cap.TARIFF_QUOTE,
            Cap.PAYMENT_VIEW,
        }
    ),
    Role.MANAGER: frozenset(
        {
            Cap.CUSTOMER_VIEW,
            Cap.CUSTOMER_CREATE,
            Cap.CUSTOMER_CHANGE,
            Cap.METER_VIEW,
            Cap.METER_CONTROL,
            Cap.COLLECTION_VIEW,
            Cap.LEDGER_VIEW,
            Cap.ADJUSTMENT_REQUEST,
            Cap.ADJUSTMENT_APPROVE,
            Cap.TARIFF_QUOTE,
            Cap.PAYMENT_VIEW,
            Cap.REVERSAL_REQUEST,
            Cap.REVERSAL_APPROVE,
            Cap.BANK_RECONCILE,
            Cap.VOUCHER_MANAGE,
            Cap.REFUND,
        }
    ),
    Role.ADMIN: frozenset(Cap),
    Role.CUSTOMER: frozenset(),
}

# Roles whose customer scope is the whole company rather than their own subtree.
GLOBAL_CUSTOMER_SCOPE = frozenset({Role.COUNTER, Role.AUDITOR, Role.ADMIN})


@dataclass(frozen=True)
class Actor:
    """A signed-in staff member as the permission rules see them."""

    user_id: int
    username: str
    role: str
    org_unit: OrgUnit | None

    @property
    def is_global(self) -> bool:
        return self.role in GLOBAL_CUSTOMER_SCOPE

    def has(self, cap: Cap) -> bool:
        return cap in ROLE_CAPABILITIES.get(self.role, frozenset())

    def in_home_scope(self, unit: OrgUnit) -> bool:
        """Whether ``unit`` lies in the actor's own subtree (not merely reachable)."""
        return self.org_unit is not None and self.org_unit.contains(unit)


def actor_for(user) -> Actor | None:
    """The staff actor behind a Django user, or None for anonymous users and customers."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    cached = getattr(user, "_kilowatt_actor", None)
    if cached is not None:
        return cached
    actor = _build_actor(user)
    user._kilowatt_actor = actor
    return actor


def _build_actor(user) -> Actor | None:
    if user.is_superuser:
        from core.models import StaffProfile

        profile = StaffProfile.objects.select_related("org_unit").filter(user=user).first()
        return Actor(user.pk, user.get_username(), Role.ADMIN, profile.org_unit if profile else None)
    from core.models import StaffProfile

    profile = StaffProfile.objects.select_related("org_unit").filter(user=user).first()
    if profile is None:
        return None
    return Actor(user.pk, user.get_username(), profile.role, profile.org_unit)


def require(user, cap: Cap) -> Actor:
    actor = actor_for(user)
    if actor is None or not actor.has(cap):
        raise PermissionDenied()
    return actor


def org_scope_q(actor: Actor, field: str = "org_unit") -> Q:
    """A filter limiting rows to those whose ``field`` (an OrgUnit FK) the actor may see."""
    if actor.is_global:
        return Q()
    if actor.org_unit is None:
        return Q(pk__in=[])
    return Q(**{f"{field}__path__startswith": actor.org_unit.path})


def can_see_unit(actor: Actor, unit: OrgUnit) -> bool:
    return actor.is_global or actor.in_home_scope(unit)
