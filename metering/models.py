"""Meters, terminals, installations, readings, collection figures and remote commands.

Reading tables are the big ones (DESIGN.md §6): on PostgreSQL ``DailyReading`` and
``IntervalReading`` are range-partitioned by time (migration 0002); their unique keys
include the partition column so that they stay enforceable per partition.
"""

from decimal import Decimal

import pghistory
from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from core.audit import trackers
from core.models import TransformerArea
from customers.models import ServicePoint

address_validator = RegexValidator(r"^\d{12}$", _("A meter address has 12 decimal digits."))
endpoint_validator = RegexValidator(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", _("Give the endpoint as HOST:PORT."))

ENERGY = {"max_digits": 12, "decimal_places": 2}  # registers up to 9,999,999,999.99 kWh
# DL/T 645 energy registers are 4-byte BCD XXXXXX.XX: they roll over after 999999.99.
REGISTER_ROLLOVER = Decimal("1000000.00")


class Protocol(models.TextChoices):
    DLT645_2007 = "dlt645-2007", _("DL/T 645-2007")


class CostControlMode(models.TextChoices):
    REMOTE = "remote", _("Remote cost control")
    LOCAL = "local", _("Local cost control")
    NONE = "none", _("No cost control")


class RelayState(models.TextChoices):
    CLOSED = "closed", _("Closed (power on)")
    OPEN = "open", _("Open (tripped)")
    UNKNOWN = "unknown", _("Unknown")


class MeterStatus(models.TextChoices):
    IN_STOCK = "in_stock", _("In stock")
    INSTALLED = "installed", _("Installed")
    REMOVED = "removed", _("Removed")


class MeterRole(models.TextChoices):
    CUSTOMER = "customer", _("Customer meter")
    AREA = "area", _("Transformer area (summary) meter")


@pghistory.track(*trackers())
class Terminal(models.Model):
    """A concentrator (集中器) or gateway: the TCP endpoint through which the head-end
    reaches the meters behind it."""

    address = models.CharField(_("terminal address"), max_length=16, unique=True)
    endpoint = models.CharField(_("endpoint"), max_length=64, validators=[endpoint_validator])
    transformer_area = models.ForeignKey(
        TransformerArea,
        verbose_name=_("transformer area"),
        on_delete=models.PROTECT,
        related_name="terminals",
        null=True,
        blank=True,
    )
    channel = models.CharField(
        _("channel"),
        max_length=16,
        choices=[("gprs", "GPRS"), ("carrier", _("Power-line carrier")), ("rf", _("Micro-power wireless"))],
        default="gprs",
    )

    class Meta:
        verbose_name = _("terminal")
        verbose_name_plural = _("terminals")
        ordering = ["address"]

    def __str__(self):
        return f"{self.address} @ {self.endpoint}"


@pghistory.track(*trackers())
class Meter(models.Model):
    asset_number = models.CharField(_("asset number"), max_length=32, unique=True)
    comm_address = models.CharField(
        _("communication address"), max_length=12, unique=True, validators=[address_validator]
    )
    manufacturer = models.CharField(_("manufacturer"), max_length=64)
    model = models.CharField(_("model"), max_length=64)
    protocol = models.CharField(
        _("protocol"), max_length=16, choices=Protocol.choices, default=Protocol.DLT645_2007
    )
    phases = models.PositiveSmallIntegerField(_("phases"), default=1, choices=[(1, "1"), (3, "3")])
    role = models.CharField(_("role"), max_length=16, choices=MeterRole.choices, default=MeterRole.CUSTOMER)
    cost_control_mode = models.CharField(
        _("cost control"), max_length=8, choices=CostControlMode.choices, default=CostControlMode.REMOTE
    )
    relay_state = models.CharField(
        _("relay state"), max_length=8, choices=RelayState.choices, default=RelayState.CLOSED
    )
    keep_power = models.BooleanField(_("keep-power (保电) set in meter"), default=False)
    alarm_on = models.BooleanField(_("alarm on"), default=False)
    relay_state_at = models.DateTimeField(_("relay state read at"), null=True, blank=True)
    firmware_version = models.CharField(_("firmware version"), max_length=32, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=MeterStatus.choices, default=MeterStatus.IN_STOCK
    )
    interval_metering = models.BooleanField(_("15-minute intervals"), default=False)
    terminal = models.ForeignKey(
        Terminal,
        verbose_name=_("terminal"),
        on_delete=models.PROTECT,
        related_name="meters",
        null=True,
        blank=True,
    )
    # Where the meter is now (denormalised from the open installation, for fast joins).
    service_point = models.ForeignKey(
        ServicePoint,
        verbose_name=_("service point"),
        on_delete=models.PROTECT,
        related_name="meters",
        null=True,
        blank=True,
    )
    transformer_area = models.ForeignKey(
        TransformerArea,
        verbose_name=_("transformer area"),
        on_delete=models.PROTECT,
        related_name="meters",
        null=True,
        blank=True,
    )

    class Meta:
        verbose_name = _("meter")
        verbose_name_plural = _("meters")
        ordering = ["asset_number"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="installed") | models.Q(transformer_area__isnull=False),
                name="meter_installed_has_area",
            ),
            models.UniqueConstraint(
                fields=["service_point"],
                condition=models.Q(status="installed"),
                name="one_installed_meter_per_service_point",
            ),
        ]
        indexes = [models.Index(fields=["status", "transformer_area"], name="meter_status_area_idx")]

    def __str__(self):
        return f"{self.asset_number} ({self.comm_address})"


class MeterInstallation(models.Model):
    """A meter's time on a service point, with the registers read when it went in and out
    (meter exchange keeps both meters' final and initial readings)."""

    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="installations")
    service_point = models.ForeignKey(
        ServicePoint, on_delete=models.PROTECT, related_name="meter_installations", null=True, blank=True
    )
    transformer_area = models.ForeignKey(
        TransformerArea, on_delete=models.PROTECT, related_name="meter_installations"
    )
    installed_at = models.DateTimeField(_("installed at"))
    removed_at = models.DateTimeField(_("removed at"), null=True, blank=True)
    initial_registers = models.JSONField(_("initial registers"), default=dict)
    final_registers = models.JSONField(_("final registers"), null=True, blank=True)
    reason = models.CharField(_("reason"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("meter installation")
        verbose_name_plural = _("meter installations")
        ordering = ["-installed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["meter"],
                condition=models.Q(removed_at__isnull=True),
                name="one_open_installation_per_meter",
            ),
            models.CheckConstraint(
                condition=models.Q(removed_at__isnull=True)
                | models.Q(removed_at__gte=models.F("installed_at")),
                name="installation_removed_after_installed",
            ),
        ]

    def __str__(self):
        return f"{self.meter_id} @ {self.service_point_id} from {self.installed_at:%Y-%m-%d}"


class ReadingSource(models.TextChoices):
    COLLECTED = "collected", _("Collected")
    ESTIMATED = "estimated", _("Estimated")
    MANUAL = "manual", _("Manual")
    EXTERNAL = "external", _("External system")


class ReadingQuality(models.TextChoices):
    VALID = "valid", _("Valid")
    ROLLOVER = "rollover", _("Valid, register rolled over")
    EXCHANGE = "exchange", _("Valid, first after meter exchange")
    OUT_OF_ORDER = "out_of_order", _("Valid, arrived out of order")
    SUSPECT = "suspect", _("Suspect (flagged for review)")
    ESTIMATED = "estimated", _("Estimated")


class ReadingBatch(models.Model):
    """One delivery of readings: a collection run, an external system's post, a manual entry.
    (source, external_id) is unique, so a batch delivered twice is stored once."""

    source = models.CharField(_("source"), max_length=16, choices=ReadingSource.choices)
    external_id = models.CharField(_("batch id"), max_length=64)
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)
    accepted = models.PositiveIntegerField(_("accepted"), default=0)
    duplicates = models.PositiveIntegerField(_("duplicates"), default=0)
    rejected = models.PositiveIntegerField(_("rejected"), default=0)
    flagged = models.PositiveIntegerField(_("flagged"), default=0)
    submitted_by = models.CharField(_("submitted by"), max_length=150, blank=True)
    # Set when every reading of the delivery has been processed; a batch without it was
    # interrupted and a re-delivery resumes it instead of being ignored.
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("reading batch")
        verbose_name_plural = _("reading batches")
        constraints = [models.UniqueConstraint(fields=["source", "external_id"], name="reading_batch_unique")]

    def __str__(self):
        return f"{self.source}:{self.external_id}"


class DailyReading(models.Model):
    """The daily freeze of one meter (registers at 00:00 local time of ``read_date``)."""

    id = models.BigAutoField(primary_key=True)
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, related_name="daily_readings", db_constraint=False
    )
    read_date = models.DateField(_("freeze date"))
    read_at = models.DateTimeField(_("read at"))
    service_point = models.ForeignKey(
        ServicePoint,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="daily_readings",
        db_constraint=False,
    )
    forward_total = models.DecimalField(_("forward active total (kWh)"), **ENERGY)
    forward_sharp = models.DecimalField(_("sharp (kWh)"), null=True, blank=True, **ENERGY)
    forward_peak = models.DecimalField(_("peak (kWh)"), null=True, blank=True, **ENERGY)
    forward_flat = models.DecimalField(_("flat (kWh)"), null=True, blank=True, **ENERGY)
    forward_valley = models.DecimalField(_("valley (kWh)"), null=True, blank=True, **ENERGY)
    reverse_total = models.DecimalField(_("reverse active total (kWh)"), null=True, blank=True, **ENERGY)
    reactive_total = models.DecimalField(_("reactive total (kvarh)"), null=True, blank=True, **ENERGY)
    max_demand_kw = models.DecimalField(
        _("maximum demand (kW)"), max_digits=10, decimal_places=4, null=True, blank=True
    )
    remaining_balance = models.DecimalField(
        _("meter's remaining balance (yuan)"), max_digits=12, decimal_places=2, null=True, blank=True
    )
    source = models.CharField(_("source"), max_length=16, choices=ReadingSource.choices)
    quality = models.CharField(
        _("quality"), max_length=16, choices=ReadingQuality.choices, default=ReadingQuality.VALID
    )
    quality_note = models.CharField(_("quality note"), max_length=200, blank=True)
    batch = models.ForeignKey(
        ReadingBatch,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="daily_readings",
        db_constraint=False,
    )

    class Meta:
        verbose_name = _("daily reading")
        verbose_name_plural = _("daily readings")
        constraints = [
            models.UniqueConstraint(fields=["meter", "read_date"], name="daily_reading_unique"),
            models.CheckConstraint(
                condition=models.Q(forward_total__gte=0), name="daily_reading_not_negative"
            ),
        ]
        indexes = [models.Index(fields=["read_date", "meter"], name="daily_reading_date_idx")]

    def __str__(self):
        return f"{self.meter_id} {self.read_date} {self.forward_total} kWh"


class IntervalReading(models.Model):
    """A 15-minute register snapshot for large customers."""

    id = models.BigAutoField(primary_key=True)
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, related_name="interval_readings", db_constraint=False
    )
    interval_end = models.DateTimeField(_("interval end"))
    forward_total = models.DecimalField(_("forward active total (kWh)"), **ENERGY)
    reactive_total = models.DecimalField(_("reactive total (kvarh)"), null=True, blank=True, **ENERGY)
    demand_kw = models.DecimalField(
        _("average demand (kW)"), max_digits=10, decimal_places=4, null=True, blank=True
    )
    source = models.CharField(_("source"), max_length=16, choices=ReadingSource.choices)
    quality = models.CharField(
        _("quality"), max_length=16, choices=ReadingQuality.choices, default=ReadingQuality.VALID
    )
    batch = models.ForeignKey(
        ReadingBatch,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="interval_readings",
        db_constraint=False,
    )

    class Meta:
        verbose_name = _("interval reading")
        verbose_name_plural = _("interval readings")
        constraints = [
            models.UniqueConstraint(fields=["meter", "interval_end"], name="interval_reading_unique"),
        ]

    def __str__(self):
        return f"{self.meter_id} {self.interval_end} {self.forward_total} kWh"


class RejectionReason(models.TextChoices):
    UNKNOWN_METER = "unknown_meter", _("Unknown meter")
    METER_NOT_INSTALLED = "meter_not_installed", _("Meter is not installed")
    MALFORMED = "malformed", _("Malformed reading")
    REGISTER_DECREASE = "register_decrease", _("Register went backwards without rollover or exchange")
    CONFLICTING_DUPLICATE = "conflicting_duplicate", _("Duplicate with different values")
    OUT_OF_ORDER_INCONSISTENT = "out_of_order", _("Out of order and inconsistent with neighbours")
    FUTURE_TIMESTAMP = "future_timestamp", _("Timestamp in the future")
    IMPOSSIBLE_JUMP = "impossible_jump", _("Consumption impossible for the meter's capacity")


class RejectedReading(models.Model):
    """Input that was not stored as a reading, kept verbatim with the reason."""

    batch = models.ForeignKey(
        ReadingBatch, on_delete=models.PROTECT, null=True, blank=True, related_name="rejections"
    )
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, null=True, blank=True, related_name="rejected_readings"
    )
    meter_address = models.CharField(_("meter address as given"), max_length=64, blank=True)
    position = models.PositiveIntegerField(_("position in batch"), null=True, blank=True)
    read_date = models.DateField(_("freeze date"), null=True, blank=True)
    payload = models.JSONField(_("input as received"))
    reason = models.CharField(_("reason"), max_length=32, choices=RejectionReason.choices)
    message = models.CharField(_("explanation"), max_length=300)
    created_at = models.DateTimeField(_("received at"), auto_now_add=True)

    class Meta:
        verbose_name = _("rejected reading")
        verbose_name_plural = _("rejected readings")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["meter", "read_date"], name="rejected_meter_date_idx")]

    def __str__(self):
        return f"{self.meter_address} {self.read_date}: {self.reason}"


class CollectionDayStat(models.Model):
    """Collection success for one transformer area and day (rolled up by org unit on read)."""

    day = models.DateField(_("day"))
    transformer_area = models.ForeignKey(
        TransformerArea, on_delete=models.CASCADE, related_name="collection_stats"
    )
    expected = models.PositiveIntegerField(_("meters expected"))
    collected = models.PositiveIntegerField(_("collected"))
    estimated = models.PositiveIntegerField(_("estimated"), default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("collection day figure")
        verbose_name_plural = _("collection day figures")
        constraints = [
            models.UniqueConstraint(fields=["day", "transformer_area"], name="collection_stat_unique"),
            models.CheckConstraint(
                condition=models.Q(collected__lte=models.F("expected")),
                name="collection_stat_collected_le_expected",
            ),
        ]

    def __str__(self):
        return f"{self.day} {self.transformer_area_id}: {self.collected}/{self.expected}"

    @property
    def success_rate(self) -> Decimal:
        if not self.expected:
            return Decimal("0")
        return (Decimal(self.collected) * 100 / self.expected).quantize(Decimal("0.1"))


class CommandAction(models.TextChoices):
    TRIP = "trip", _("Trip (跳闸)")
    CLOSE = "close", _("Direct close (直接合闸)")
    CLOSE_ALLOWED = "close_allowed", _("Close allowed (合闸允许)")
    ALARM_ON = "alarm_on", _("Alarm on")
    ALARM_OFF = "alarm_off", _("Alarm off")
    KEEP_POWER_ON = "keep_power_on", _("Keep power on (保电)")
    KEEP_POWER_OFF = "keep_power_off", _("Keep power off (保电解除)")
    PARAMETER_DOWNLOAD = "parameter_download", _("Parameter download")
    TARIFF_DOWNLOAD = "tariff_download", _("Tariff download")
    FIRMWARE_UPGRADE = "firmware_upgrade", _("Firmware upgrade")


RELAY_ACTIONS = (CommandAction.TRIP, CommandAction.CLOSE, CommandAction.CLOSE_ALLOWED)


class CommandStatus(models.TextChoices):
    REQUESTED = "requested", _("Requested")
    QUEUED = "queued", _("Queued")
    SENT = "sent", _("Sent")
    CONFIRMED = "confirmed", _("Confirmed")
    FAILED = "failed", _("Failed")
    TIMED_OUT = "timed_out", _("Timed out")
    CANCELLED = "cancelled", _("Cancelled")


ACTIVE_COMMAND_STATUSES = (CommandStatus.REQUESTED, CommandStatus.QUEUED, CommandStatus.SENT)
FINAL_COMMAND_STATUSES = (
    CommandStatus.CONFIRMED,
    CommandStatus.FAILED,
    CommandStatus.TIMED_OUT,
    CommandStatus.CANCELLED,
)

# The only status changes there are; metering.services.commands refuses any other.
COMMAND_TRANSITIONS = {
    CommandStatus.REQUESTED: {CommandStatus.QUEUED, CommandStatus.CANCELLED},
    # A queued command is confirmed without sending when the read-back that starts every
    # dispatch shows the meter already in the commanded state (e.g. a dispatcher died after
    # its frame took effect): that read-back is what keeps a command from running twice.
    CommandStatus.QUEUED: {
        CommandStatus.SENT,
        CommandStatus.CONFIRMED,
        CommandStatus.CANCELLED,
        CommandStatus.FAILED,
        CommandStatus.TIMED_OUT,
    },
    # A sent command is confirmed by read-back, or goes back to the queue for another
    # attempt, or ends failed (attempts exhausted) or timed out (validity deadline passed).
    CommandStatus.SENT: {
        CommandStatus.CONFIRMED,
        CommandStatus.QUEUED,
        CommandStatus.FAILED,
        CommandStatus.TIMED_OUT,
    },
    CommandStatus.CONFIRMED: set(),
    CommandStatus.FAILED: set(),
    CommandStatus.TIMED_OUT: set(),
    CommandStatus.CANCELLED: set(),
}


class CommandOrigin(models.TextChoices):
    STAFF = "staff", _("Staff")
    POLICY = "policy", _("Cost-control policy")
    SYSTEM = "system", _("System")


@pghistory.track(*trackers())
class RemoteCommand(models.Model):
    meter = models.ForeignKey(
        Meter, verbose_name=_("meter"), on_delete=models.PROTECT, related_name="commands"
    )
    action = models.CharField(_("action"), max_length=24, choices=CommandAction.choices)
    parameters = models.JSONField(_("parameters"), default=dict, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=CommandStatus.choices, default=CommandStatus.REQUESTED
    )
    origin = models.CharField(_("origin"), max_length=16, choices=CommandOrigin.choices)
    reason = models.CharField(_("reason"), max_length=300)
    requested_by = models.ForeignKey(
        "auth.User",
        verbose_name=_("requested by"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    # A caller that may retry (the policy engine, an API client) passes a key: the same key
    # returns the same command instead of creating a second one.
    idempotency_key = models.CharField(max_length=100, null=True, blank=True, unique=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    max_attempts = models.PositiveSmallIntegerField(_("max attempts"), default=4)
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    # A dispatcher claims the command until this time; a dead worker's claim expires.
    lease_until = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(_("valid until"))
    last_error = models.CharField(_("last error"), max_length=300, blank=True)
    meter_response = models.JSONField(_("meter's answer"), default=dict, blank=True)
    requested_at = models.DateTimeField(_("requested at"), auto_now_add=True)
    queued_at = models.DateTimeField(_("queued at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("remote command")
        verbose_name_plural = _("remote commands")
        ordering = ["-requested_at"]
        constraints = [
            # At most one relay command in flight per meter: a new one supersedes the old.
            models.UniqueConstraint(
                fields=["meter"],
                condition=models.Q(
                    status__in=["requested", "queued", "sent"], action__in=["trip", "close", "close_allowed"]
                ),
                name="one_active_relay_command_per_meter",
            ),
            models.CheckConstraint(
                condition=models.Q(attempts__lte=models.F("max_attempts")), name="command_attempts_bounded"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="command_due_idx"),
            models.Index(fields=["meter", "-requested_at"], name="command_meter_idx"),
        ]

    def __str__(self):
        return f"{self.get_action_display()} → {self.meter.asset_number} ({self.get_status_display()})"

    @property
    def latency_seconds(self):
        if self.confirmed_at:
            return (self.confirmed_at - self.requested_at).total_seconds()
        return None


class CommandAttempt(models.Model):
    """One try at delivering a command: when it was claimed, sent and answered, and how."""

    command = models.ForeignKey(RemoteCommand, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    worker = models.CharField(max_length=100, blank=True)
    started_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=32, blank=True)
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["command", "number"]
        constraints = [models.UniqueConstraint(fields=["command", "number"], name="command_attempt_unique")]

    def __str__(self):
        return f"{self.command_id}#{self.number} {self.outcome}"


class WorkOrderStatus(models.TextChoices):
    OPEN = "open", _("Open")
    IN_PROGRESS = "in_progress", _("In progress")
    DONE = "done", _("Done")
    CANCELLED = "cancelled", _("Cancelled")


@pghistory.track(*trackers())
class FieldWorkOrder(models.Model):
    """A job for a technician on site, e.g. after a remote command failed for good."""

    meter = models.ForeignKey(
        Meter, verbose_name=_("meter"), on_delete=models.PROTECT, related_name="work_orders"
    )
    command = models.OneToOneField(
        RemoteCommand,
        verbose_name=_("failed command"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="work_order",
    )
    kind = models.CharField(_("kind"), max_length=32)
    description = models.CharField(_("description"), max_length=500)
    status = models.CharField(
        _("status"), max_length=16, choices=WorkOrderStatus.choices, default=WorkOrderStatus.OPEN
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    closed_at = models.DateTimeField(_("closed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("field work order")
        verbose_name_plural = _("field work orders")
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.kind} {self.meter_id} ({self.status})"
