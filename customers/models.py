"""The customer register: customers, their accounts, metering (service) points and contacts.

Models hold data and constraints only; every write goes through customers.services.
"""

import pghistory
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from core.audit import trackers
from core.models import OrgUnit, TransformerArea
from customers.validators import display_phone


class CustomerCategory(models.TextChoices):
    RESIDENTIAL = "residential", _("Residential")
    COMMERCIAL = "commercial", _("Commercial")
    LARGE_INDUSTRY = "large_industry", _("Large industry")
    AGRICULTURE = "agriculture", _("Agriculture")


class VoltageLevel(models.TextChoices):
    V220 = "220V", _("AC 220 V")
    V380 = "380V", _("AC 380 V")
    KV10 = "10kV", _("AC 10 kV")
    KV35 = "35kV", _("AC 35 kV")
    KV110 = "110kV", _("AC 110 kV")


class ImportanceGrade(models.TextChoices):
    SPECIAL = "special", _("Special grade")
    GRADE1 = "grade1", _("Grade 1")
    GRADE2 = "grade2", _("Grade 2")
    TEMPORARY = "temporary", _("Temporary important")
    ORDINARY = "ordinary", _("Ordinary")


class IdType(models.TextChoices):
    RESIDENT_ID = "resident_id", _("Resident ID card")
    CREDIT_CODE = "credit_code", _("Unified social credit code")
    PASSPORT = "passport", _("Passport")
    OTHER = "other", _("Other document")


class CustomerStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    SUSPENDED = "suspended", _("Suspended")
    CLOSED = "closed", _("Closed")


class SettlementMode(models.TextChoices):
    PREPAID = "prepaid", _("Prepaid (cost control)")
    POSTPAID = "postpaid", _("Post-paid (monthly bill)")


class AccountStatus(models.TextChoices):
    OPEN = "open", _("Open")
    CLOSED = "closed", _("Closed")


class ServicePointStatus(models.TextChoices):
    ACTIVE = "active", _("In service")
    DISCONNECTED = "disconnected", _("Disconnected")
    REMOVED = "removed", _("Removed")


class ContactRole(models.TextChoices):
    OWNER = "owner", _("Owner")
    AGENT = "agent", _("Authorised agent")
    ELECTRICIAN = "electrician", _("Electrician")
    BILLING = "billing", _("Billing contact")
    EMERGENCY = "emergency", _("Emergency contact")


@pghistory.track(*trackers())
class Customer(models.Model):
    number = models.CharField(_("customer number"), max_length=16, unique=True)
    name = models.CharField(_("name"), max_length=100)
    id_type = models.CharField(_("ID document type"), max_length=16, choices=IdType.choices)
    # The full document number is never stored: only a masked form for display and a keyed
    # digest (HMAC-SHA256) for matching what a customer types in.
    id_number_masked = models.CharField(_("ID document (masked)"), max_length=32)
    id_number_digest = models.CharField(max_length=64, db_index=True, editable=False)
    mobile_phone = models.CharField(_("mobile phone"), max_length=20)
    other_phone = models.CharField(_("other phone"), max_length=20, blank=True)
    email = models.EmailField(_("e-mail"), blank=True)
    address = models.CharField(_("address"), max_length=200)
    category = models.CharField(_("category"), max_length=16, choices=CustomerCategory.choices)
    voltage_level = models.CharField(_("voltage level"), max_length=8, choices=VoltageLevel.choices)
    contracted_capacity_kva = models.DecimalField(
        _("contracted capacity (kVA)"),
        max_digits=10,
        decimal_places=2,
        validators=[MinValueValidator(0)],
    )
    importance_grade = models.CharField(
        _("importance grade"),
        max_length=16,
        choices=ImportanceGrade.choices,
        default=ImportanceGrade.ORDINARY,
    )
    protected = models.BooleanField(
        _("protected (保电)"),
        default=False,
        help_text=_("A protected customer is never tripped by cost control."),
    )
    protected_reason = models.CharField(_("reason for protection"), max_length=200, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=CustomerStatus.choices, default=CustomerStatus.ACTIVE
    )
    org_unit = models.ForeignKey(
        OrgUnit,
        verbose_name=_("managing unit"),
        on_delete=models.PROTECT,
        related_name="customers",
    )
    # How the customer wants to hear from the utility (chosen in the portal): portal messages
    # always, SMS and e-mail as chosen. E-mail needs an address to take effect.
    notify_by_sms = models.BooleanField(_("notices by SMS"), default=True)
    notify_by_email = models.BooleanField(_("notices by e-mail"), default=True)
    # Optimistic concurrency: an edit form carries the version it was read at.
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("customer")
        verbose_name_plural = _("customers")
        ordering = ["number"]
        indexes = [
            models.Index(fields=["mobile_phone"], name="customer_mobile_idx"),
            models.Index(fields=["org_unit", "number"], name="customer_unit_number_idx"),
            models.Index(fields=["name"], name="customer_name_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(contracted_capacity_kva__gte=0),
                name="customer_capacity_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(protected=False) | ~models.Q(protected_reason=""),
                name="customer_protected_has_reason",
            ),
        ]

    def __str__(self):
        return f"{self.number} {self.name}"

    @property
    def mobile_phone_display(self):
        return display_phone(self.mobile_phone)

    @property
    def other_phone_display(self):
        return display_phone(self.other_phone)


@pghistory.track(*trackers())
class Account(models.Model):
    """A settlement account: prepaid accounts are cost-controlled, post-paid ones are billed."""

    number = models.CharField(_("account number"), max_length=20, unique=True)
    customer = models.ForeignKey(
        Customer, verbose_name=_("customer"), on_delete=models.PROTECT, related_name="accounts"
    )
    settlement_mode = models.CharField(_("settlement mode"), max_length=16, choices=SettlementMode.choices)
    status = models.CharField(
        _("status"), max_length=16, choices=AccountStatus.choices, default=AccountStatus.OPEN
    )
    opened_on = models.DateField(_("opened on"))
    closed_on = models.DateField(_("closed on"), null=True, blank=True)

    class Meta:
        verbose_name = _("account")
        verbose_name_plural = _("accounts")
        ordering = ["number"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(closed_on__isnull=True) | models.Q(closed_on__gte=models.F("opened_on")),
                name="account_closed_after_opened",
            ),
            models.CheckConstraint(
                condition=models.Q(status="open", closed_on__isnull=True)
                | models.Q(status="closed", closed_on__isnull=False),
                name="account_status_matches_closed_on",
            ),
        ]

    def __str__(self):
        return self.number


@pghistory.track(*trackers())
class ServicePoint(models.Model):
    """A metering point: where energy is delivered and measured for one account."""

    number = models.CharField(_("service point number"), max_length=20, unique=True)
    customer = models.ForeignKey(
        Customer, verbose_name=_("customer"), on_delete=models.PROTECT, related_name="service_points"
    )
    account = models.ForeignKey(
        Account, verbose_name=_("account"), on_delete=models.PROTECT, related_name="service_points"
    )
    address = models.CharField(_("address"), max_length=200)
    transformer_area = models.ForeignKey(
        TransformerArea,
        verbose_name=_("transformer area"),
        on_delete=models.PROTECT,
        related_name="service_points",
    )
    ct_ratio = models.PositiveIntegerField(_("CT ratio"), default=1)
    pt_ratio = models.PositiveIntegerField(_("PT ratio"), default=1)
    status = models.CharField(
        _("status"), max_length=16, choices=ServicePointStatus.choices, default=ServicePointStatus.ACTIVE
    )

    class Meta:
        verbose_name = _("service point")
        verbose_name_plural = _("service points")
        ordering = ["number"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ct_ratio__gte=1), name="service_point_ct_ratio_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(pt_ratio__gte=1), name="service_point_pt_ratio_positive"
            ),
        ]

    def __str__(self):
        return self.number

    @property
    def multiplier(self) -> int:
        """Meter multiplier (倍率) = CT ratio × PT ratio."""
        return self.ct_ratio * self.pt_ratio


@pghistory.track(*trackers())
class Contact(models.Model):
    customer = models.ForeignKey(
        Customer, verbose_name=_("customer"), on_delete=models.CASCADE, related_name="contacts"
    )
    name = models.CharField(_("name"), max_length=100)
    role = models.CharField(_("role"), max_length=16, choices=ContactRole.choices)
    phone = models.CharField(_("phone"), max_length=20)
    email = models.EmailField(_("e-mail"), blank=True)

    class Meta:
        verbose_name = _("contact")
        verbose_name_plural = _("contacts")
        ordering = ["customer", "role", "name"]

    def __str__(self):
        return f"{self.name} ({self.get_role_display()})"

    @property
    def phone_display(self):
        return display_phone(self.phone)
