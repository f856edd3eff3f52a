"""Shared kernel data: the organisation tree, transformer areas and staff profiles."""

import pghistory
from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _
from treebeard.mp_tree import MP_Node

from core.audit import trackers


class OrgUnitKind(models.TextChoices):
    PROVINCE = "province", _("Provincial company")
    CITY = "city", _("City company")
    COUNTY = "county", _("County company")
    HALL = "hall", _("Service hall")
    STATION = "station", _("Supply station")


# Which kind of unit may sit under which: province → city → county → hall / station.
ALLOWED_CHILD_KINDS = {
    None: {OrgUnitKind.PROVINCE},
    OrgUnitKind.PROVINCE: {OrgUnitKind.CITY},
    OrgUnitKind.CITY: {OrgUnitKind.COUNTY},
    OrgUnitKind.COUNTY: {OrgUnitKind.HALL, OrgUnitKind.STATION},
    OrgUnitKind.HALL: set(),
    OrgUnitKind.STATION: set(),
}

code_validator = RegexValidator(r"^[A-Z0-9-]{2,32}$", _("Use 2-32 capital letters, digits or '-'."))


@pghistory.track(*trackers())
class OrgUnit(MP_Node):
    """A unit of the utility. ``path`` (materialised path) makes 'this unit and everything
    below it' one indexed prefix match, which every scope filter relies on."""

    code = models.CharField(_("code"), max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=16, choices=OrgUnitKind.choices)
    address = models.CharField(_("address"), max_length=200, blank=True)
    phone = models.CharField(_("phone"), max_length=32, blank=True)

    node_order_by = ["code"]

    class Meta:
        verbose_name = _("org unit")
        verbose_name_plural = _("org units")

    def __str__(self):
        return self.name

    def subtree(self):
        return OrgUnit.objects.filter(path__startswith=self.path)

    def contains(self, other: "OrgUnit") -> bool:
        return other.path.startswith(self.path)


@pghistory.track(*trackers())
class TransformerArea(models.Model):
    """台区: the low-voltage area fed by one distribution transformer, under a supply station."""

    code = models.CharField(_("code"), max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(_("name"), max_length=100)
    supply_station = models.ForeignKey(
        OrgUnit,
        verbose_name=_("supply station"),
        on_delete=models.PROTECT,
        related_name="transformer_areas",
        limit_choices_to={"kind": OrgUnitKind.STATION},
    )
    transformer_capacity_kva = models.DecimalField(
        _("transformer capacity (kVA)"),
        max_digits=10,
        decimal_places=2,
        validators=[MinValueValidator(0)],
    )

    class Meta:
        verbose_name = _("transformer area")
        verbose_name_plural = _("transformer areas")
        ordering = ["code"]

    def __str__(self):
        return f"{self.name} ({self.code})"


class Role(models.TextChoices):
    COUNTER = "counter", _("Counter staff")
    INSPECTOR = "inspector", _("Inspector")
    AUDITOR = "auditor", _("Auditor")
    MANAGER = "manager", _("Manager")
    ADMIN = "admin", _("Administrator")
    CUSTOMER = "customer", _("Customer")


STAFF_ROLES = [r for r in Role if r != Role.CUSTOMER]


@pghistory.track(*trackers())
class StaffProfile(models.Model):
    """What a staff member is (role) and where they work (org unit). Scope follows both."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_profile"
    )
    role = models.CharField(_("role"), max_length=16, choices=Role.choices)
    org_unit = models.ForeignKey(
        OrgUnit, verbose_name=_("org unit"), on_delete=models.PROTECT, related_name="staff"
    )

    class Meta:
        verbose_name = _("staff profile")
        verbose_name_plural = _("staff profiles")
        constraints = [
            models.CheckConstraint(condition=~models.Q(role="customer"), name="staff_profile_role_is_staff")
        ]

    def __str__(self):
        return f"{self.user.get_username()} ({self.get_role_display()}, {self.org_unit})"


class Sequence(models.Model):
    """Named counters for business numbers (customer numbers, account numbers, ...).

    Allocation locks the row, so numbers are unique and gap-free per committed transaction.
    """

    name = models.CharField(max_length=64, primary_key=True)
    last_value = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = _("number sequence")
        verbose_name_plural = _("number sequences")

    def __str__(self):
        return f"{self.name}={self.last_value}"
