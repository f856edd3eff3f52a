"""Tariffs, the ledger, real-time rating state and the cost-control policy.

Tariffs are data: a tariff has dated versions (prices, tiers, TOU periods, funds included in
the price, basic charge, power-factor standard), so a price change is a new version and the
rating engine (``billing.rating``) splits a period at the change.

The ledger is append-only (a PostgreSQL trigger refuses UPDATE and DELETE): every charge,
payment and correction is an entry, a balance is the sum of an account's entries and the
cached ``AccountBilling.balance`` is checked against that sum by ``manage.py ledger_check``.
"""

import pghistory
import pgtrigger
from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from core.audit import trackers
from customers.models import Account, CustomerCategory, ImportanceGrade
from metering.models import Meter, RemoteCommand

MONEY = {"max_digits": 14, "decimal_places": 2}
PRICE = {"max_digits": 12, "decimal_places": 6}
ENERGY = {"max_digits": 14, "decimal_places": 2}


class Band(models.TextChoices):
    SHARP = "sharp", _("Sharp (尖)")
    PEAK = "peak", _("Peak (峰)")
    FLAT = "flat", _("Flat (平)")
    VALLEY = "valley", _("Valley (谷)")


class TierBasis(models.TextChoices):
    NONE = "none", _("No tiers")
    MONTHLY = "monthly", _("Monthly blocks")
    ANNUAL = "annual", _("Annual blocks")


class BasicBasis(models.TextChoices):
    NONE = "none", _("No basic charge")
    CAPACITY = "capacity", _("By contracted capacity (kVA)")
    DEMAND = "demand", _("By maximum demand (kW)")


class PowerFactorStandard(models.TextChoices):
    PF090 = "0.90", "0.90"
    PF085 = "0.85", "0.85"
    PF080 = "0.80", "0.80"


@pghistory.track(*trackers())
class Tariff(models.Model):
    code = models.CharField(_("code"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=100)
    category = models.CharField(_("customer category"), max_length=16, choices=CustomerCategory.choices)
    description = models.TextField(_("description"), blank=True)
    holiday_band = models.CharField(
        _("band on public holidays"),
        max_length=8,
        choices=Band.choices,
        blank=True,
        help_text=_("When set, interval consumption on statutory holidays is billed in this band."),
    )
    active = models.BooleanField(_("open to new accounts"), default=True)

    class Meta:
        verbose_name = _("tariff")
        verbose_name_plural = _("tariffs")
        ordering = ["code"]

    def __str__(self):
        return f"{self.code} {self.name}"


@pghistory.track(*trackers())
class TariffVersion(models.Model):
    """The prices of a tariff from ``effective_from`` (inclusive) to ``effective_to`` (exclusive)."""

    tariff = models.ForeignKey(
        Tariff, verbose_name=_("tariff"), on_delete=models.PROTECT, related_name="versions"
    )
    effective_from = models.DateField(_("effective from"))
    effective_to = models.DateField(_("effective until (exclusive)"), null=True, blank=True)
    price_flat = models.DecimalField(_("flat / single price (yuan/kWh)"), **PRICE)
    price_sharp = models.DecimalField(_("sharp price (yuan/kWh)"), null=True, blank=True, **PRICE)
    price_peak = models.DecimalField(_("peak price (yuan/kWh)"), null=True, blank=True, **PRICE)
    price_valley = models.DecimalField(_("valley price (yuan/kWh)"), null=True, blank=True, **PRICE)
    tier_basis = models.CharField(
        _("tier blocks"), max_length=8, choices=TierBasis.choices, default=TierBasis.NONE
    )
    basic_basis = models.CharField(
        _("basic charge"), max_length=8, choices=BasicBasis.choices, default=BasicBasis.NONE
    )
    basic_price = models.DecimalField(
        _("basic charge price (yuan per kVA or kW a month)"),
        default=0,
        validators=[MinValueValidator(0)],
        **PRICE,
    )
    pf_standard = models.CharField(
        _("power-factor standard"), max_length=4, choices=PowerFactorStandard.choices, blank=True
    )
    note = models.CharField(_("note"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("tariff version")
        verbose_name_plural = _("tariff versions")
        ordering = ["tariff", "effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["tariff", "effective_from"], name="tariff_version_unique_start"),
            models.CheckConstraint(
                condition=Q(effective_to__isnull=True) | Q(effective_to__gt=models.F("effective_from")),
                name="tariff_version_dates_ordered",
            ),
            models.CheckConstraint(condition=Q(price_flat__gte=0), name="tariff_version_price_not_negative"),
        ]

    def __str__(self):
        return f"{self.tariff.code} {self.effective_from}"


@pghistory.track(*trackers())
class TariffTier(models.Model):
    version = models.ForeignKey(TariffVersion, on_delete=models.CASCADE, related_name="tiers")
    number = models.PositiveSmallIntegerField(_("tier"))
    upper_kwh = models.DecimalField(
        _("upper bound (kWh per block period)"),
        null=True,
        blank=True,
        help_text=_("Empty for the last tier."),
        **ENERGY,
    )
    price_adder = models.DecimalField(_("price adder (yuan/kWh)"), default=0, **PRICE)

    class Meta:
        verbose_name = _("tier")
        verbose_name_plural = _("tiers")
        ordering = ["version", "number"]
        constraints = [models.UniqueConstraint(fields=["version", "number"], name="tariff_tier_unique")]

    def __str__(self):
        return f"{self.version} tier {self.number}"


@pghistory.track(*trackers())
class TariffSurcharge(models.Model):
    """A government fund or surcharge included in the energy price, itemised on charges."""

    version = models.ForeignKey(TariffVersion, on_delete=models.CASCADE, related_name="surcharges")
    code = models.CharField(_("code"), max_length=32)
    name = models.CharField(_("name"), max_length=100)
    price_per_kwh = models.DecimalField(_("yuan/kWh"), validators=[MinValueValidator(0)], **PRICE)

    class Meta:
        verbose_name = _("fund or surcharge")
        verbose_name_plural = _("funds and surcharges")
        ordering = ["version", "code"]
        constraints = [models.UniqueConstraint(fields=["version", "code"], name="tariff_surcharge_unique")]

    def __str__(self):
        return f"{self.name} {self.price_per_kwh}"


@pghistory.track(*trackers())
class TouPeriod(models.Model):
    """A time-of-use period; ``months`` is the season (comma-separated month numbers)."""

    version = models.ForeignKey(TariffVersion, on_delete=models.CASCADE, related_name="tou_periods")
    months = models.CharField(_("months"), max_length=40, default="1,2,3,4,5,6,7,8,9,10,11,12")
    start = models.TimeField(_("start"))
    end = models.TimeField(_("end"), help_text=_("00:00 means midnight at the end of the day."))
    band = models.CharField(_("band"), max_length=8, choices=Band.choices)

    class Meta:
        verbose_name = _("time-of-use period")
        verbose_name_plural = _("time-of-use periods")
        ordering = ["version", "months", "start"]

    def __str__(self):
        return f"{self.months} {self.start:%H:%M}-{self.end:%H:%M} {self.band}"

    def month_set(self) -> frozenset[int]:
        return frozenset(int(m) for m in self.months.split(",") if m.strip())


class PowerFactorRow(models.Model):
    """One row of the 1983 power-factor adjustment tables (水电财字第215号), kept as data."""

    standard = models.CharField(_("standard"), max_length=4, choices=PowerFactorStandard.choices)
    power_factor = models.DecimalField(_("power factor"), max_digits=3, decimal_places=2)
    adjustment_percent = models.DecimalField(
        _("adjustment (%)"),
        max_digits=6,
        decimal_places=2,
        help_text=_("Positive: surcharge; negative: reduction."),
    )

    class Meta:
        verbose_name = _("power-factor table row")
        verbose_name_plural = _("power-factor table")
        ordering = ["standard", "-power_factor"]
        constraints = [
            models.UniqueConstraint(fields=["standard", "power_factor"], name="power_factor_row_unique")
        ]

    def __str__(self):
        return f"{self.standard}: {self.power_factor} → {self.adjustment_percent}%"


@pghistory.track(*trackers())
class AccountTariff(models.Model):
    """Which tariff an account is billed on, from a date."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="tariff_assignments")
    tariff = models.ForeignKey(Tariff, on_delete=models.PROTECT, related_name="assignments")
    effective_from = models.DateField(_("effective from"))

    class Meta:
        verbose_name = _("account tariff")
        verbose_name_plural = _("account tariffs")
        ordering = ["account", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["account", "effective_from"], name="account_tariff_unique_start")
        ]

    def __str__(self):
        return f"{self.account_id} {self.tariff_id} {self.effective_from}"


@pghistory.track(*trackers())
class CostControlPolicy(models.Model):
    """Warning, trip and close thresholds, chosen per account by category and grade.

    The most specific matching policy applies (category and grade before category alone
    before the default); an account may name its own by contract."""

    code = models.CharField(_("code"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=100)
    category = models.CharField(
        _("customer category"), max_length=16, choices=CustomerCategory.choices, blank=True
    )
    importance_grade = models.CharField(
        _("importance grade"), max_length=16, choices=ImportanceGrade.choices, blank=True
    )
    warning1_threshold = models.DecimalField(_("warning level 1 at or below (yuan)"), **MONEY)
    warning2_threshold = models.DecimalField(_("warning level 2 at or below (yuan)"), **MONEY)
    trip_threshold = models.DecimalField(_("trip below (yuan)"), **MONEY)
    close_threshold = models.DecimalField(_("close above (yuan)"), **MONEY)
    credit_allowance = models.DecimalField(_("credit allowance (yuan)"), default=0, **MONEY)
    required_warning = models.PositiveSmallIntegerField(
        _("warning required before a trip"),
        choices=[(0, _("None")), (1, _("Level 1")), (2, _("Level 2"))],
        default=2,
    )
    grace_hours = models.DecimalField(
        _("grace after the warning (hours)"), max_digits=6, decimal_places=2, default=24
    )
    night_start = models.TimeField(_("no trips from"), default="20:00")
    night_end = models.TimeField(_("no trips until"), default="08:00")
    no_trip_on_holidays = models.BooleanField(_("no trips on public holidays"), default=True)

    class Meta:
        verbose_name = _("cost-control policy")
        verbose_name_plural = _("cost-control policies")
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(trip_threshold__lt=models.F("close_threshold")), name="policy_trip_below_close"
            ),
            models.CheckConstraint(
                condition=Q(trip_threshold__lte=models.F("warning2_threshold"))
                & Q(warning2_threshold__lte=models.F("warning1_threshold")),
                name="policy_thresholds_ordered",
            ),
            models.CheckConstraint(condition=Q(credit_allowance__gte=0), name="policy_credit_not_negative"),
        ]

    def __str__(self):
        return f"{self.code} {self.name}"


class NoTripEvent(models.Model):
    """A declared period (exams, extreme weather, major events) in which nobody is tripped."""

    name = models.CharField(_("name"), max_length=100)
    starts_at = models.DateTimeField(_("starts"))
    ends_at = models.DateTimeField(_("ends"))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)

    class Meta:
        verbose_name = _("no-trip event")
        verbose_name_plural = _("no-trip events")
        ordering = ["-starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=models.F("starts_at")), name="no_trip_event_ordered"
            )
        ]

    def __str__(self):
        return self.name


class CostControlState(models.TextChoices):
    NORMAL = "normal", _("Normal")
    WARNING1 = "warning1", _("Warning level 1")
    WARNING2 = "warning2", _("Warning level 2")
    TRIPPED = "tripped", _("Tripped")


# The balance moves with every posting and is audited by the ledger itself; the audit trail
# records the staff-set terms (credit allowance, contract policy) and state changes.
@pghistory.track(
    pghistory.UpdateEvent(
        "terms_or_state_changed",
        condition=pghistory.AnyChange("credit_allowance", "policy", "state"),
    ),
)
class AccountBilling(models.Model):
    """An account's billing state: cached balance (checked against the ledger), credit
    allowance, policy and cost-control state. Locked (in account id order) by every
    service that posts to the ledger."""

    account = models.OneToOneField(
        Account, primary_key=True, on_delete=models.PROTECT, related_name="billing"
    )
    balance = models.DecimalField(_("balance"), default=0, **MONEY)
    credit_allowance = models.DecimalField(
        _("credit allowance (yuan)"), null=True, blank=True, help_text=_("Empty: the policy's."), **MONEY
    )
    policy = models.ForeignKey(
        CostControlPolicy,
        verbose_name=_("policy by contract"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text=_("Empty: chosen by category and grade."),
    )
    state = models.CharField(
        _("cost-control state"),
        max_length=10,
        choices=CostControlState.choices,
        default=CostControlState.NORMAL,
    )
    state_changed_at = models.DateTimeField(_("state changed"), null=True, blank=True)
    warning1_at = models.DateTimeField(_("warning 1 sent"), null=True, blank=True)
    warning2_at = models.DateTimeField(_("warning 2 sent"), null=True, blank=True)
    tripped_at = models.DateTimeField(_("tripped"), null=True, blank=True)
    withheld_reason = models.CharField(_("trip withheld because"), max_length=100, blank=True)
    last_rated_at = models.DateTimeField(_("last rated"), null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("account billing state")
        verbose_name_plural = _("account billing states")
        indexes = [models.Index(fields=["state"], name="account_billing_state_idx")]

    def __str__(self):
        return f"{self.account_id} {self.balance}"


class TierAccumulator(models.Model):
    """kWh an account has used in a tier period (a calendar month or year), for block prices."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    period_start = models.DateField(_("tier period start"))
    kwh = models.DecimalField(_("kWh used"), default=0, **ENERGY)

    class Meta:
        verbose_name = _("tier accumulator")
        verbose_name_plural = _("tier accumulators")
        constraints = [
            models.UniqueConstraint(fields=["account", "period_start"], name="tier_accumulator_unique")
        ]

    def __str__(self):
        return f"{self.account_id} {self.period_start} {self.kwh} kWh"


class RatingCursor(models.Model):
    """The registers up to which a meter's consumption has been rated (real-time rating)."""

    meter = models.OneToOneField(Meter, primary_key=True, on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    read_date = models.DateField()
    reading_id = models.BigIntegerField()
    estimated = models.BooleanField(default=False)
    total = models.DecimalField(**ENERGY)
    sharp = models.DecimalField(null=True, **ENERGY)
    peak = models.DecimalField(null=True, **ENERGY)
    flat = models.DecimalField(null=True, **ENERGY)
    valley = models.DecimalField(null=True, **ENERGY)
    multiplier = models.DecimalField(max_digits=10, decimal_places=2, default=1)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.meter_id} rated to {self.read_date} ({self.total} kWh)"


class EntryKind(models.TextChoices):
    ENERGY_CHARGE = "energy", _("Energy charge")
    BASIC_CHARGE = "basic", _("Basic charge")
    POWER_FACTOR = "power_factor", _("Power-factor adjustment")
    PAYMENT = "payment", _("Payment")
    ADJUSTMENT = "adjustment", _("Adjustment")
    REVERSAL = "reversal", _("Reversal")
    LATE_FEE = "late_fee", _("Late fee")
    PENALTY = "penalty", _("Penalty")
    REFUND = "refund", _("Refund")


class EntrySource(models.TextChoices):
    READING = "reading", _("Reading")
    BILL = "bill", _("Bill")
    PAYMENT = "payment", _("Payment")
    STAFF = "staff", _("Staff action")
    SYSTEM = "system", _("System")


# Which sign an entry of a kind may carry: amounts credit the customer when positive.
CHARGE_KINDS = (EntryKind.BASIC_CHARGE, EntryKind.LATE_FEE, EntryKind.PENALTY, EntryKind.REFUND)


class LedgerEntry(models.Model):
    """One append-only posting to an account. ``amount`` > 0 credits the customer (payment),
    < 0 charges them. ``idempotency_key`` makes every posting happen at most once."""

    id = models.BigAutoField(primary_key=True)
    account = models.ForeignKey(
        Account, verbose_name=_("account"), on_delete=models.PROTECT, related_name="ledger_entries"
    )
    kind = models.CharField(_("kind"), max_length=16, choices=EntryKind.choices)
    amount = models.DecimalField(_("amount"), **MONEY)
    kwh = models.DecimalField(_("kWh"), null=True, blank=True, **ENERGY)
    business_date = models.DateField(_("business date"))
    description = models.CharField(_("description"), max_length=200)
    source = models.CharField(_("source"), max_length=16, choices=EntrySource.choices)
    source_ref = models.CharField(_("source reference"), max_length=64, blank=True)
    idempotency_key = models.CharField(max_length=96, unique=True)
    reverses = models.OneToOneField(
        "self",
        verbose_name=_("reverses"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reversed_by",
    )
    details = models.JSONField(_("details"), null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(_("posted at"), default=timezone.now, editable=False)

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        indexes = [models.Index(fields=["account", "id"], name="ledger_account_idx")]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="ledger_amount_not_zero"),
            models.CheckConstraint(
                condition=~Q(kind__in=[k.value for k in CHARGE_KINDS]) | Q(amount__lt=0),
                name="ledger_charges_negative",
            ),
            models.CheckConstraint(
                condition=~Q(kind=EntryKind.PAYMENT) | Q(amount__gt=0), name="ledger_payments_positive"
            ),
            models.CheckConstraint(
                condition=~Q(kind=EntryKind.REVERSAL) | Q(reverses__isnull=False),
                name="ledger_reversal_names_entry",
            ),
        ]
        triggers = [
            pgtrigger.Protect(name="ledger_append_only", operation=pgtrigger.Update | pgtrigger.Delete),
        ]

    def __str__(self):
        return f"{self.account_id} {self.kind} {self.amount}"


class PolicyAction(models.TextChoices):
    NONE = "none", _("Nothing")
    WARN1 = "warn1", _("Warning level 1")
    WARN2 = "warn2", _("Warning level 2")
    TRIP = "trip", _("Trip")
    TRIP_WITHHELD = "trip_withheld", _("Trip withheld")
    CLOSE = "close", _("Close")
    RECOVER = "recover", _("Back to normal")


class PolicyDecision(models.Model):
    """A cost-control decision and the numbers that led to it (append-only)."""

    id = models.BigAutoField(primary_key=True)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="policy_decisions")
    action = models.CharField(_("decision"), max_length=16, choices=PolicyAction.choices)
    reason = models.CharField(_("reason"), max_length=40)
    message = models.CharField(_("explanation"), max_length=300)
    numbers = models.JSONField(_("figures"), default=dict)
    blocked_by = models.JSONField(_("blocked by"), default=list, blank=True)
    trigger = models.CharField(_("trigger"), max_length=16)
    trigger_ref = models.CharField(_("trigger reference"), max_length=64, blank=True)
    state_before = models.CharField(max_length=10, choices=CostControlState.choices)
    state_after = models.CharField(max_length=10, choices=CostControlState.choices)
    command = models.ForeignKey(
        RemoteCommand, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    decided_at = models.DateTimeField(_("decided at"))

    class Meta:
        verbose_name = _("policy decision")
        verbose_name_plural = _("policy decisions")
        indexes = [
            models.Index(fields=["account", "-decided_at"], name="policy_decision_account_idx"),
            models.Index(fields=["action", "-decided_at"], name="policy_decision_action_idx"),
        ]
        triggers = [
            pgtrigger.Protect(
                name="policy_decision_append_only", operation=pgtrigger.Update | pgtrigger.Delete
            ),
        ]

    def __str__(self):
        return f"{self.account_id} {self.action} {self.decided_at:%Y-%m-%d %H:%M}"


class AdjustmentStatus(models.TextChoices):
    PENDING = "pending", _("Awaiting approval")
    APPROVED = "approved", _("Approved and posted")
    REJECTED = "rejected", _("Rejected")


@pghistory.track(*trackers())
class AdjustmentRequest(models.Model):
    """A manual ledger adjustment: requested by one person, posted only when another approves."""

    account = models.ForeignKey(
        Account, verbose_name=_("account"), on_delete=models.PROTECT, related_name="adjustments"
    )
    amount = models.DecimalField(_("amount (+ credit, - charge)"), **MONEY)
    reason = models.CharField(_("reason"), max_length=300)
    status = models.CharField(
        _("status"), max_length=10, choices=AdjustmentStatus.choices, default=AdjustmentStatus.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("requested by"), on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(_("requested at"), auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("decided by"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    decision_note = models.CharField(_("decision note"), max_length=300, blank=True)
    entry = models.OneToOneField(
        LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        verbose_name = _("manual adjustment")
        verbose_name_plural = _("manual adjustments")
        ordering = ["-requested_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="adjustment_amount_not_zero"),
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True) | ~Q(decided_by=models.F("requested_by")),
                name="adjustment_four_eyes",
            ),
        ]

    def __str__(self):
        return f"{self.account_id} {self.amount} {self.status}"
