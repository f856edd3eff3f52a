"""Writes to the customer register. Each service checks the actor's role and scope,
validates with messages a clerk can act on, locks what it changes, and runs inside an
audit context that records who acted, in which role, from which unit (the service hall
for counter staff) and whether the business was cross-region."""

import contextlib
import hashlib
import hmac
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.models import OrgUnit, OrgUnitKind, TransformerArea
from core.permissions import Actor, Cap
from core.services.sequences import sequence_allocate, sequence_next
from customers.models import (
    Account,
    AccountStatus,
    Contact,
    ContactRole,
    Customer,
    CustomerCategory,
    CustomerStatus,
    IdType,
    ImportanceGrade,
    ServicePoint,
    SettlementMode,
    VoltageLevel,
)
from customers.validators import (
    normalize_mobile,
    normalize_phone,
    normalize_resident_id,
    validate_credit_code,
    validate_resident_id,
)

CUSTOMER_NUMBER_SEQUENCE = "customer_number"
CUSTOMER_NUMBER_START = 3_100_000_001
SERVICE_POINT_SEQUENCE = "service_point_number"
SERVICE_POINT_START = 7_100_000_001

# Fields a customer edit may change; identity changes go through ``id_number``.
EDITABLE_FIELDS = (
    "name",
    "mobile_phone",
    "other_phone",
    "email",
    "address",
    "category",
    "voltage_level",
    "contracted_capacity_kva",
    "importance_grade",
    "protected",
    "protected_reason",
    "status",
    "org_unit",
)


# --- identity documents -----------------------------------------------------------------


def identity_digest(id_type: str, number: str) -> str:
    key = settings.IDENTITY_DIGEST_KEY.encode()
    return hmac.new(key, f"{id_type}:{number}".encode(), hashlib.sha256).hexdigest()


def mask_identity(id_type: str, number: str) -> str:
    """Keep what a clerk needs to compare with a card in hand, hide the rest."""
    if id_type == IdType.RESIDENT_ID:
        return number[:6] + "*" * 8 + number[-4:]
    if len(number) <= 4:
        return "*" * len(number)
    keep_head = 4 if id_type == IdType.CREDIT_CODE else 0
    return number[:keep_head] + "*" * (len(number) - keep_head - 4) + number[-4:]


def _clean_identity(id_type: str, id_number: str) -> str:
    if id_type == IdType.RESIDENT_ID:
        return validate_resident_id(id_number)
    if id_type == IdType.CREDIT_CODE:
        return validate_credit_code(id_number)
    number = normalize_resident_id(id_number)
    if not 5 <= len(number) <= 32 or not number.isalnum():
        raise DjangoValidationError(_("A document number has 5 to 32 letters or digits."), code="id_format")
    return number


# --- permission and audit helpers ---------------------------------------------------------


def _require(actor: Actor | None, cap: Cap) -> Actor:
    if actor is None or not actor.has(cap):
        raise PermissionDenied()
    return actor


def _require_customer(actor: Actor, customer: Customer, cap: Cap) -> None:
    _require(actor, cap)
    if not (actor.is_global or actor.in_home_scope(customer.org_unit)):
        # Outside the actor's scope the customer does not exist, as far as they can tell.
        raise NotFound(_("No such customer."))


@contextlib.contextmanager
def _audited(actor: Actor, *, customer_unit: OrgUnit | None = None, action: str):
    """Audit context for one business action. Counter staff acting for a customer outside
    their own county are doing cross-region business: record the hall and both units."""
    meta = {
        "action": action,
        "user": actor.user_id,
        "username": actor.username,
        "role": actor.role,
    }
    if actor.org_unit is not None:
        meta["org_unit"] = actor.org_unit.code
        meta["org_unit_name"] = actor.org_unit.name
        if actor.org_unit.kind == OrgUnitKind.HALL:
            meta["hall"] = actor.org_unit.code
            meta["hall_name"] = actor.org_unit.name
    if customer_unit is not None:
        meta["customer_unit"] = customer_unit.code
        # A hall's home is its county; any other unit is its own home (a county, a city).
        home = actor.org_unit
        if home is not None and home.kind == OrgUnitKind.HALL:
            home = OrgUnit.objects.get_parent(home) or home
        meta["cross_region"] = bool(home is not None and not home.contains(customer_unit))
    with audit_context(**meta):
        yield


# --- input checks ------------------------------------------------------------------------


@dataclass
class _Errors:
    errors: dict

    def add(self, field: str, message) -> None:
        self.errors.setdefault(field, []).append(str(message))

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError(field_errors=self.errors)


def _check_choice(errors: _Errors, field: str, value, choices) -> None:
    if value not in choices.values:
        errors.add(field, _("“%(v)s” is not one of the allowed values.") % {"v": value})


def _validated_fields(data: dict, errors: _Errors) -> dict:
    """Normalise and check the customer fields present in ``data``."""
    out = {}
    if "name" in data:
        name = (data["name"] or "").strip()
        if len(name) < 2:
            errors.add("name", _("Enter the customer's full name (at least 2 characters)."))
        out["name"] = name
    for field, required in (("mobile_phone", True), ("other_phone", False)):
        if field not in data:
            continue
        raw = (data[field] or "").strip()
        if not raw and not required:
            out[field] = ""
            continue
        try:
            out[field] = normalize_mobile(raw) if field == "mobile_phone" else normalize_phone(raw)
        except DjangoValidationError as exc:
            errors.add(field, exc.messages[0])
    if "email" in data:
        email = (data["email"] or "").strip()
        if email:
            try:
                validate_email(email)
            except DjangoValidationError:
                errors.add("email", _("Enter a valid e-mail address."))
        out["email"] = email
    if "address" in data:
        address = (data["address"] or "").strip()
        if len(address) < 5:
            errors.add("address", _("Enter the full address (at least 5 characters)."))
        out["address"] = address
    for field, choices in (
        ("category", CustomerCategory),
        ("voltage_level", VoltageLevel),
        ("importance_grade", ImportanceGrade),
        ("status", CustomerStatus),
    ):
        if field in data:
            _check_choice(errors, field, data[field], choices)
            out[field] = data[field]
    if "contracted_capacity_kva" in data:
        try:
            capacity = Decimal(str(data["contracted_capacity_kva"]))
            if (
                not capacity.is_finite()
                or capacity < 0
                or capacity.as_tuple().exponent < -2
                or capacity > Decimal("99999999")
            ):
                raise ValueError
            out["contracted_capacity_kva"] = capacity
        except (ValueError, ArithmeticError):
            errors.add(
                "contracted_capacity_kva",
                _("Enter the contracted capacity in kVA, not negative, at most 2 decimals."),
            )
    if "protected" in data:
        out["protected"] = bool(data["protected"])
    if "protected_reason" in data:
        out["protected_reason"] = (data["protected_reason"] or "").strip()
    if "org_unit" in data:
        out["org_unit"] = data["org_unit"]
    return out


def _check_consistency(values: dict, errors: _Errors) -> None:
    if values.get("protected") and not values.get("protected_reason"):
        errors.add("protected_reason", _("Say why the customer is protected from tripping."))
    if not values.get("protected"):
        values["protected_reason"] = ""
    category = values.get("category")
    voltage = values.get("voltage_level")
    if category == CustomerCategory.RESIDENTIAL and voltage not in (VoltageLevel.V220, VoltageLevel.V380):
        errors.add("voltage_level", _("Residential customers are supplied at 220 V or 380 V."))
    if category == CustomerCategory.LARGE_INDUSTRY:
        capacity = values.get("contracted_capacity_kva") or Decimal(0)
        if capacity < 315:
            errors.add(
                "contracted_capacity_kva",
                _("Large-industry customers have a contracted capacity of at least 315 kVA."),
            )


# --- services ----------------------------------------------------------------------------


@transaction.atomic
def customer_create(
    *,
    actor: Actor,
    name: str,
    id_type: str,
    id_number: str,
    mobile_phone: str,
    address: str,
    category: str,
    voltage_level: str,
    contracted_capacity_kva,
    transformer_area: TransformerArea,
    settlement_mode: str,
    other_phone: str = "",
    email: str = "",
    importance_grade: str = ImportanceGrade.ORDINARY,
    protected: bool = False,
    protected_reason: str = "",
    service_address: str = "",
    ct_ratio: int = 1,
    pt_ratio: int = 1,
    opened_on: date | None = None,
) -> Customer:
    """Register a customer with their first account and service point (业扩 new connection).

    The customer is managed by the supply station of the chosen transformer area.
    """
    _require(actor, Cap.CUSTOMER_CREATE)
    org_unit = transformer_area.supply_station
    if not (actor.is_global or actor.in_home_scope(org_unit)):
        raise PermissionDenied(_("That transformer area belongs to a unit outside your scope."))
    errors = _Errors({})
    values = _validated_fields(
        {
            "name": name,
            "mobile_phone": mobile_phone,
            "other_phone": other_phone,
            "email": email,
            "address": address,
            "category": category,
            "voltage_level": voltage_level,
            "contracted_capacity_kva": contracted_capacity_kva,
            "importance_grade": importance_grade,
            "protected": protected,
            "protected_reason": protected_reason,
        },
        errors,
    )
    _check_choice(errors, "id_type", id_type, IdType)
    _check_choice(errors, "settlement_mode", settlement_mode, SettlementMode)
    id_clean = ""
    try:
        id_clean = _clean_identity(id_type, id_number)
    except DjangoValidationError as exc:
        errors.add("id_number", exc.messages[0])
    for field, ratio in (("ct_ratio", ct_ratio), ("pt_ratio", pt_ratio)):
        if not isinstance(ratio, int) or ratio < 1:
            errors.add(field, _("A transformer ratio is a whole number of at least 1."))
    _check_consistency(values, errors)
    errors.raise_if_any()

    number = str(sequence_next(name=CUSTOMER_NUMBER_SEQUENCE, start=CUSTOMER_NUMBER_START))
    with _audited(actor, customer_unit=org_unit, action="customer.create"):
        try:
            with transaction.atomic():
                customer = Customer.objects.create(
                    number=number,
                    id_type=id_type,
                    id_number_masked=mask_identity(id_type, id_clean),
                    id_number_digest=identity_digest(id_type, id_clean),
                    org_unit=org_unit,
                    **values,
                )
        except IntegrityError as exc:
            raise Conflict(_("A customer with number %(n)s already exists.") % {"n": number}) from exc
        account = _account_create(customer, settlement_mode, opened_on)
        _service_point_create(
            customer,
            account,
            address=service_address.strip() or values["address"],
            transformer_area=transformer_area,
            ct_ratio=ct_ratio,
            pt_ratio=pt_ratio,
        )
        Contact.objects.create(
            customer=customer, name=values["name"], role=ContactRole.OWNER, phone=values["mobile_phone"]
        )
    return customer


def _account_create(customer: Customer, settlement_mode: str, opened_on: date | None) -> Account:
    suffix = customer.accounts.count() + 1
    return Account.objects.create(
        number=f"{customer.number}{suffix:02d}",
        customer=customer,
        settlement_mode=settlement_mode,
        opened_on=opened_on or timezone.localdate(),
    )


def _service_point_create(customer, account, *, address, transformer_area, ct_ratio, pt_ratio):
    number = str(sequence_next(name=SERVICE_POINT_SEQUENCE, start=SERVICE_POINT_START))
    return ServicePoint.objects.create(
        number=number,
        customer=customer,
        account=account,
        address=address,
        transformer_area=transformer_area,
        ct_ratio=ct_ratio,
        pt_ratio=pt_ratio,
    )


def _lock_customer(customer_id: int) -> Customer:
    return Customer.objects.select_for_update().select_related("org_unit").get(pk=customer_id)


@transaction.atomic
def customer_update(
    *, actor: Actor, customer: Customer, expected_version: int | None = None, **changes
) -> Customer:
    """Change customer fields. ``expected_version`` is the version the editor read; if the
    record has moved on since, nothing is written and Conflict is raised."""
    unknown = set(changes) - set(EDITABLE_FIELDS) - {"id_type", "id_number"}
    if unknown:
        raise ValidationError(
            _("These fields cannot be changed here: %(f)s") % {"f": ", ".join(sorted(unknown))}
        )
    locked = _lock_customer(customer.pk)
    _require_customer(actor, locked, Cap.CUSTOMER_CHANGE)
    if expected_version is not None and locked.version != expected_version:
        raise Conflict()
    if "org_unit" in changes:
        new_unit = changes["org_unit"]
        if new_unit.kind not in (OrgUnitKind.STATION, OrgUnitKind.COUNTY):
            raise ValidationError(
                field_errors={"org_unit": [_("A customer is managed by a supply station or county.")]}
            )
        if not (actor.is_global or actor.in_home_scope(new_unit)):
            raise PermissionDenied(_("You cannot move a customer to a unit outside your scope."))
    if (
        locked.status == CustomerStatus.CLOSED
        and changes.get("status", locked.status) == CustomerStatus.CLOSED
    ):
        raise ValidationError(_("A closed customer record cannot be changed."))
    errors = _Errors({})
    values = _validated_fields(changes, errors)
    if "id_number" in changes:
        id_type = changes.get("id_type", locked.id_type)
        _check_choice(errors, "id_type", id_type, IdType)
        try:
            id_clean = _clean_identity(id_type, changes["id_number"])
            values["id_type"] = id_type
            values["id_number_masked"] = mask_identity(id_type, id_clean)
            values["id_number_digest"] = identity_digest(id_type, id_clean)
        except DjangoValidationError as exc:
            errors.add("id_number", exc.messages[0])
    merged = {f: getattr(locked, f) for f in EDITABLE_FIELDS}
    merged.update(values)
    _check_consistency(merged, errors)
    values["protected_reason"] = merged["protected_reason"]
    if (
        values.get("status") == CustomerStatus.CLOSED
        and locked.accounts.filter(status=AccountStatus.OPEN).exists()
    ):
        errors.add("status", _("Close the customer's accounts before closing the customer."))
    errors.raise_if_any()

    changed = [f for f, v in values.items() if getattr(locked, f) != v]
    if not changed:
        return locked
    with _audited(actor, customer_unit=locked.org_unit, action="customer.update"):
        for field in changed:
            setattr(locked, field, values[field])
        locked.version += 1
        locked.save(update_fields=[*changed, "version", "updated_at"])
    return locked


@transaction.atomic
def account_open(*, actor: Actor, customer: Customer, settlement_mode: str) -> Account:
    locked = _lock_customer(customer.pk)
    _require_customer(actor, locked, Cap.CUSTOMER_CHANGE)
    if locked.status != CustomerStatus.ACTIVE:
        raise ValidationError(_("Accounts can be opened only for active customers."))
    if settlement_mode not in SettlementMode.values:
        raise ValidationError(field_errors={"settlement_mode": [_("Choose a settlement mode.")]})
    with _audited(actor, customer_unit=locked.org_unit, action="account.open"):
        return _account_create(locked, settlement_mode, None)


@transaction.atomic
def account_close(*, actor: Actor, account: Account, closed_on: date | None = None) -> Account:
    locked_customer = _lock_customer(account.customer_id)
    _require_customer(actor, locked_customer, Cap.CUSTOMER_CHANGE)
    locked = Account.objects.select_for_update().get(pk=account.pk)
    if locked.status == AccountStatus.CLOSED:
        raise Conflict(_("The account is already closed."))
    closed_on = closed_on or timezone.localdate()
    if closed_on < locked.opened_on:
        raise ValidationError(_("An account cannot close before it opened."))
    with _audited(actor, customer_unit=locked_customer.org_unit, action="account.close"):
        locked.status = AccountStatus.CLOSED
        locked.closed_on = closed_on
        locked.save(update_fields=["status", "closed_on"])
    return locked


@transaction.atomic
def service_point_add(
    *,
    actor: Actor,
    account: Account,
    address: str,
    transformer_area: TransformerArea,
    ct_ratio: int = 1,
    pt_ratio: int = 1,
) -> ServicePoint:
    customer = _lock_customer(account.customer_id)
    _require_customer(actor, customer, Cap.CUSTOMER_CHANGE)
    # Check the account as it is now, under the customer's lock, not the caller's copy.
    account = Account.objects.select_for_update().get(pk=account.pk)
    if account.status != AccountStatus.OPEN:
        raise ValidationError(_("Service points can be added only to open accounts."))
    if not (actor.is_global or actor.in_home_scope(transformer_area.supply_station)):
        raise PermissionDenied(_("That transformer area belongs to a unit outside your scope."))
    errors = _Errors({})
    if len((address or "").strip()) < 5:
        errors.add("address", _("Enter the full address (at least 5 characters)."))
    for field, ratio in (("ct_ratio", ct_ratio), ("pt_ratio", pt_ratio)):
        if not isinstance(ratio, int) or ratio < 1:
            errors.add(field, _("A transformer ratio is a whole number of at least 1."))
    errors.raise_if_any()
    with _audited(actor, customer_unit=customer.org_unit, action="service_point.add"):
        return _service_point_create(
            customer,
            account,
            address=address.strip(),
            transformer_area=transformer_area,
            ct_ratio=ct_ratio,
            pt_ratio=pt_ratio,
        )


@transaction.atomic
def contact_add(
    *, actor: Actor, customer: Customer, name: str, role: str, phone: str, email: str = ""
) -> Contact:
    locked = _lock_customer(customer.pk)
    _require_customer(actor, locked, Cap.CUSTOMER_CHANGE)
    errors = _Errors({})
    name = (name or "").strip()
    if len(name) < 2:
        errors.add("name", _("Enter the contact's full name (at least 2 characters)."))
    _check_choice(errors, "role", role, ContactRole)
    clean_phone = ""
    try:
        clean_phone = normalize_phone(phone)
    except DjangoValidationError as exc:
        errors.add("phone", exc.messages[0])
    email = (email or "").strip()
    if email:
        try:
            validate_email(email)
        except DjangoValidationError:
            errors.add("email", _("Enter a valid e-mail address."))
    errors.raise_if_any()
    with _audited(actor, customer_unit=locked.org_unit, action="contact.add"):
        return Contact.objects.create(customer=locked, name=name, role=role, phone=clean_phone, email=email)


@transaction.atomic
def contact_remove(*, actor: Actor, contact: Contact) -> None:
    locked = _lock_customer(contact.customer_id)
    _require_customer(actor, locked, Cap.CUSTOMER_CHANGE)
    if (
        contact.role == ContactRole.OWNER
        and not locked.contacts.filter(role=ContactRole.OWNER).exclude(pk=contact.pk).exists()
    ):
        raise ValidationError(_("A customer must keep at least one owner contact."))
    with _audited(actor, customer_unit=locked.org_unit, action="contact.remove"):
        contact.delete()


def allocate_customer_numbers(count: int) -> range:
    """Bulk allocation for the demo loader and imports."""
    return sequence_allocate(name=CUSTOMER_NUMBER_SEQUENCE, count=count, start=CUSTOMER_NUMBER_START)


def allocate_service_point_numbers(count: int) -> range:
    return sequence_allocate(name=SERVICE_POINT_SEQUENCE, count=count, start=SERVICE_POINT_START)
