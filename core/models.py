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


# --- Notification outbox ------------------------------------------------------------------


class NotificationChannel(models.TextChoices):
    SMS = "sms", _("SMS")
    EMAIL = "email", _("E-mail")
    PORTAL = "portal", _("Portal message")


class NotificationTopic(models.TextChoices):
    """What a notification is about. Add members freely: the column holds any short code."""

    LOW_BALANCE_1 = "low_balance_1", _("Low balance, first warning")
    LOW_BALANCE_2 = "low_balance_2", _("Low balance, second warning")
    TRIP = "trip", _("Supply cut off for arrears")
    RESTORE = "restore", _("Supply restored")
    PAYMENT_RECEIPT = "payment_receipt", _("Payment receipt")
    ONE_TIME_CODE = "one_time_code", _("One-time code")
    OTHER = "other", _("Other")


class NotificationStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


FINAL_NOTIFICATION_STATUSES = frozenset(
    {NotificationStatus.SENT, NotificationStatus.FAILED, NotificationStatus.CANCELLED}
)


class Notification(models.Model):
    """One message to one recipient, written in the same transaction as the event that
    causes it (outbox) and delivered afterwards by ``core.services.notifications``.

    ``customer_id`` / ``account_id`` are plain numbers, not foreign keys: core is the
    leftmost layer and must not know the customers app. ``dedupe_key`` (unique when set)
    makes "the same event never queues twice" a database rule, e.g.
    ``"low_balance_1:account:42:2026-10-01T08:00"``.
    """

    channel = models.CharField(_("channel"), max_length=16, choices=NotificationChannel.choices)
    recipient = models.CharField(
        _("recipient"), max_length=254, blank=True, help_text=_("Phone number or e-mail address.")
    )
    topic = models.CharField(_("topic"), max_length=32, choices=NotificationTopic.choices)
    subject = models.CharField(_("subject"), max_length=200, blank=True)
    body = models.TextField(_("text"))
    customer_id = models.BigIntegerField(_("customer id"), null=True, blank=True, db_index=True)
    account_id = models.BigIntegerField(_("account id"), null=True, blank=True, db_index=True)
    status = models.CharField(
        _("status"), max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    provider_message_id = models.CharField(_("provider message id"), max_length=200, blank=True)
    dedupe_key = models.CharField(_("deduplication key"), max_length=200, null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    # While ``sending``: until when the delivering worker's claim holds (see the service).
    lease_until = models.DateTimeField(_("claimed until"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dedupe_key"],
                condition=models.Q(dedupe_key__isnull=False),
                name="notification_dedupe_key_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(channel="portal") | ~models.Q(recipient=""),
                name="notification_recipient_unless_portal",
            ),
            models.CheckConstraint(
                condition=~models.Q(channel="portal") | models.Q(customer_id__isnull=False),
                name="notification_portal_has_customer",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=[s.value for s in NotificationStatus]),
                name="notification_status_valid",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="sent") | models.Q(sent_at__isnull=False),
                name="notification_sent_has_sent_at",
            ),
        ]
        indexes = [
            # The sweep: undelivered notifications by due time (a small partial index).
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status__in=["pending", "sending"]),
                name="notification_undelivered_idx",
            ),
        ]

    def __str__(self):
        to = self.recipient or f"customer {self.customer_id}"
        return f"{self.get_channel_display()} {self.topic} → {to} ({self.status})"
