"""Payments by every channel (DESIGN.md flow 3), each posted once to the ledger.

A payment is identified by its channel and the channel's own id (``external_id``): the
database refuses a second row with the same pair, so a retried or duplicated delivery returns
the first payment and posts nothing new. The ledger entry is billing's; a payment row records
where the money came from (channel, cashier and shift, device, bank, gateway order, voucher),
and the close command it caused, so the time from payment to power back can be measured.
"""

import pghistory
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from billing.models import LedgerEntry
from core.audit import trackers
from core.models import OrgUnit
from customers.models import Account
from metering.models import RemoteCommand

MONEY = {"max_digits": 14, "decimal_places": 2}


class Channel(models.TextChoices):
    COUNTER = "counter", _("Counter")
    TERMINAL = "terminal", _("Self-service terminal")
    BANK = "bank", _("Bank agency")
    ONLINE = "online", _("Online payment")
    IVR = "ivr", _("Phone (IVR)")
    VOUCHER = "voucher", _("Recharge voucher")


class Method(models.TextChoices):
    CASH = "cash", _("Cash")
    CARD = "card", _("Bank card")
    TRANSFER = "transfer", _("Bank transfer / collection")
    ONLINE = "online", _("Online wallet")
    VOUCHER = "voucher", _("Voucher")


class PaymentStatus(models.TextChoices):
    POSTED = "posted", pgettext_lazy("payment status", "Posted")
    REVERSED = "reversed", _("Reversed")


@pghistory.track(*trackers())
class CashierShift(models.Model):
    """A cashier's shift at a hall; settlement compares expected and counted cash and locks it."""

    class Status(models.TextChoices):
        OPEN = "open", pgettext_lazy("cashier shift", "Open")
        SETTLED = "settled", _("Settled (locked)")

    cashier = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    hall = models.ForeignKey(OrgUnit, verbose_name=_("hall"), on_delete=models.PROTECT, related_name="+")
    opened_at = models.DateTimeField(_("opened"), default=timezone.now)
    opening_float = models.DecimalField(_("opening float"), default=0, **MONEY)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.OPEN)
    settled_at = models.DateTimeField(_("settled"), null=True, blank=True)
    expected_cash = models.DecimalField(_("expected cash"), null=True, blank=True, **MONEY)
    counted_cash = models.DecimalField(_("counted cash"), null=True, blank=True, **MONEY)
    note = models.CharField(_("note"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("cashier shift")
        verbose_name_plural = _("cashier shifts")
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["cashier"], condition=Q(status="open"), name="one_open_shift_per_cashier"
            )
        ]

    def __str__(self):
        return f"{self.cashier_id} {self.opened_at:%Y-%m-%d %H:%M}"

    @property
    def difference(self):
        if self.counted_cash is None or self.expected_cash is None:
            return None
        return self.counted_cash - self.expected_cash


class TerminalDevice(models.Model):
    """A machine client of the payment APIs (a self-service terminal, or the phone system's
    IVR); its secret is stored only as a hash."""

    class Kind(models.TextChoices):
        TERMINAL = "terminal", _("Self-service terminal")
        IVR = "ivr", _("Phone system (IVR)")
        BANK = "bank", _("Agency bank (real-time postings; the device code is the bank code)")

    code = models.CharField(_("device code"), max_length=32, unique=True)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.TERMINAL)
    hall = models.ForeignKey(OrgUnit, verbose_name=_("hall"), on_delete=models.PROTECT, related_name="+")
    secret_hash = models.CharField(max_length=128, editable=False)
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("payment terminal")
        verbose_name_plural = _("payment terminals")

    def __str__(self):
        return self.code


class Bank(models.Model):
    code = models.CharField(_("bank code"), max_length=16, unique=True)
    name = models.CharField(_("name"), max_length=100)

    class Meta:
        verbose_name = _("agency bank")
        verbose_name_plural = _("agency banks")

    def __str__(self):
        return f"{self.code} {self.name}"


@pghistory.track(*trackers())
class Payment(models.Model):
    id = models.BigAutoField(primary_key=True)
    channel = models.CharField(pgettext_lazy("payment", "channel"), max_length=10, choices=Channel.choices)
    external_id = models.CharField(_("channel reference"), max_length=64)
    account = models.ForeignKey(
        Account, verbose_name=_("account"), on_delete=models.PROTECT, related_name="payments"
    )
    amount = models.DecimalField(_("amount"), **MONEY)
    method = models.CharField(_("method"), max_length=10, choices=Method.choices)
    status = models.CharField(
        _("status"), max_length=10, choices=PaymentStatus.choices, default=PaymentStatus.POSTED
    )
    received_at = models.DateTimeField(_("received"))
    posted_at = models.DateTimeField(_("posted"), default=timezone.now)
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="payment")
    cashier = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    shift = models.ForeignKey(
        CashierShift, null=True, blank=True, on_delete=models.PROTECT, related_name="payments"
    )
    hall = models.ForeignKey(OrgUnit, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    device = models.ForeignKey(
        TerminalDevice, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    bank = models.ForeignKey(Bank, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    cash_tendered = models.DecimalField(_("cash tendered"), null=True, blank=True, **MONEY)
    change_given = models.DecimalField(_("change"), null=True, blank=True, **MONEY)
    payer = models.CharField(_("payer"), max_length=100, blank=True)
    # The close command this payment caused (a tripped account lifted above its threshold).
    restore_command = models.ForeignKey(
        RemoteCommand, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = _("payment")
        verbose_name_plural = _("payments")
        ordering = ["-posted_at"]
        constraints = [
            models.UniqueConstraint(fields=["channel", "external_id"], name="payment_unique_per_channel"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
        ]
        indexes = [
            models.Index(fields=["account", "-posted_at"], name="payment_account_idx"),
            models.Index(fields=["channel", "posted_at"], name="payment_channel_day_idx"),
        ]

    def __str__(self):
        return f"{self.channel}:{self.external_id} {self.amount}"


# --- bank agency ---------------------------------------------------------------------------


class BankFile(models.Model):
    """A bank's daily file of the payments it collected for the utility."""

    bank = models.ForeignKey(Bank, verbose_name=_("bank"), on_delete=models.PROTECT, related_name="files")
    business_date = models.DateField(_("business date"))
    file_name = models.CharField(_("file name"), max_length=200)
    sha256 = models.CharField(max_length=64)
    imported_at = models.DateTimeField(_("imported"), default=timezone.now)
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    line_count = models.PositiveIntegerField(default=0)
    total_amount = models.DecimalField(default=0, **MONEY)

    class Meta:
        verbose_name = _("bank file")
        verbose_name_plural = _("bank files")
        ordering = ["-business_date", "bank"]
        constraints = [
            models.UniqueConstraint(fields=["bank", "business_date"], name="bank_file_one_per_day")
        ]

    def __str__(self):
        return f"{self.bank.code} {self.business_date}"


class BankFileLine(models.Model):
    file = models.ForeignKey(BankFile, on_delete=models.CASCADE, related_name="lines")
    line_number = models.PositiveIntegerField()
    bank_serial = models.CharField(_("bank serial"), max_length=64)
    account_number = models.CharField(_("account number"), max_length=20)
    amount = models.DecimalField(_("amount"), **MONEY)
    paid_at = models.DateTimeField(_("paid at"))

    class Meta:
        verbose_name = _("bank file line")
        verbose_name_plural = _("bank file lines")
        ordering = ["file", "line_number"]
        constraints = [
            models.UniqueConstraint(fields=["file", "bank_serial"], name="bank_line_serial_unique")
        ]

    def __str__(self):
        return f"{self.bank_serial} {self.amount}"


@pghistory.track(*trackers())
class ReconciliationItem(models.Model):
    """One finding of matching a bank file against what was posted in real time. Tracked, so
    that clearing an item (who, when, note; before/after) stays in the audit trail."""

    class Kind(models.TextChoices):
        MATCHED = "matched", _("Matched")
        LONG = "long", _("Long: in the bank file, not posted")
        SHORT = "short", _("Short: posted, not in the bank file")
        MISMATCH = "mismatch", _("Mismatch: account or amount differs")

    file = models.ForeignKey(BankFile, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices)
    line = models.OneToOneField(
        BankFileLine, null=True, blank=True, on_delete=models.CASCADE, related_name="item"
    )
    payment = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(_("note"), max_length=300, blank=True)
    cleared = models.BooleanField(_("cleared"), default=False)
    cleared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    cleared_at = models.DateTimeField(null=True, blank=True)
    clearing_note = models.CharField(_("clearing note"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("reconciliation item")
        verbose_name_plural = _("reconciliation items")
        ordering = ["file", "kind", "pk"]

    def __str__(self):
        return f"{self.file} {self.kind}"


# --- online payment ------------------------------------------------------------------------


class GatewayOrder(models.Model):
    """An online payment order sent to a gateway; paid when its signed notification arrives."""

    class Status(models.TextChoices):
        CREATED = "created", _("Awaiting payment")
        PAID = "paid", _("Paid")
        FAILED = "failed", _("Failed")
        EXPIRED = "expired", _("Expired")

    order_no = models.CharField(_("order number"), max_length=40, unique=True)
    provider = models.CharField(_("gateway"), max_length=32)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    amount = models.DecimalField(_("amount"), **MONEY)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.CREATED)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)
    provider_txn_id = models.CharField(max_length=64, blank=True)
    payment = models.OneToOneField(Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    customer_user_id = models.BigIntegerField(null=True, blank=True)  # the portal user who started it
    return_url = models.CharField(max_length=300, blank=True)

    class Meta:
        verbose_name = _("online payment order")
        verbose_name_plural = _("online payment orders")
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="gateway_order_amount_positive")
        ]

    def __str__(self):
        return self.order_no


class GatewayNotification(models.Model):
    """Every notification a gateway sent, accepted or not (bad signatures and replays are kept)."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted", _("Accepted")
        DUPLICATE = "duplicate", _("Duplicate of an accepted notification")
        BAD_SIGNATURE = "bad_signature", _("Bad signature")
        REPLAY = "replay", _("Replayed or stale")
        AMOUNT_MISMATCH = "amount_mismatch", _("Amount differs from the order")
        UNKNOWN_ORDER = "unknown_order", _("Unknown order")
        MALFORMED = "malformed", _("Malformed")
        REFUSED = "refused", _("Signed, but the payment was refused (e.g. account closed)")

    provider = models.CharField(max_length=32)
    received_at = models.DateTimeField(default=timezone.now)
    order_no = models.CharField(max_length=40, blank=True)
    nonce = models.CharField(max_length=64, blank=True)
    body = models.TextField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.CharField(max_length=300, blank=True)
    remote_addr = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = _("gateway notification")
        verbose_name_plural = _("gateway notifications")
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "nonce"], condition=Q(outcome="accepted"), name="gateway_nonce_once"
            )
        ]

    def __str__(self):
        return f"{self.provider} {self.order_no} {self.outcome}"


# --- recharge vouchers ---------------------------------------------------------------------


class VoucherBatch(models.Model):
    code = models.CharField(_("batch code"), max_length=32, unique=True)
    face_value = models.DecimalField(_("face value"), **MONEY)
    quantity = models.PositiveIntegerField(_("quantity"))
    expires_on = models.DateField(_("expires on"))
    issued_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    issued_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("voucher batch")
        verbose_name_plural = _("voucher batches")
        ordering = ["-issued_at"]
        constraints = [
            models.CheckConstraint(condition=Q(face_value__gt=0), name="voucher_face_value_positive")
        ]

    def __str__(self):
        return self.code


@pghistory.track(*trackers())
class Voucher(models.Model):
    class Status(models.TextChoices):
        ISSUED = "issued", _("Issued (not sold)")
        SOLD = "sold", _("Sold")
        REDEEMED = "redeemed", _("Redeemed")
        VOID = "void", _("Void")

    batch = models.ForeignKey(VoucherBatch, on_delete=models.PROTECT, related_name="vouchers")
    serial = models.CharField(_("serial number"), max_length=20, unique=True)
    pin_hash = models.CharField(max_length=128, editable=False)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.ISSUED)
    sold_at = models.DateTimeField(null=True, blank=True)
    sold_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    redeemed_at = models.DateTimeField(null=True, blank=True)
    payment = models.OneToOneField(
        Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="voucher"
    )
    voided_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name = _("recharge voucher")
        verbose_name_plural = _("recharge vouchers")

    def __str__(self):
        return self.serial


class VoucherFailure(models.Model):
    """A failed redemption attempt (wrong PIN, unknown serial...), for lockout and audit."""

    serial = models.CharField(max_length=40)
    client_key = models.CharField(max_length=100)  # who tried: channel + caller / user / address
    reason = models.CharField(max_length=32)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["serial", "at"], name="voucher_failure_serial_idx"),
            models.Index(fields=["client_key", "at"], name="voucher_failure_client_idx"),
        ]

    def __str__(self):
        return f"{self.serial} {self.reason}"


# --- reversals and refunds -----------------------------------------------------------------


@pghistory.track(*trackers())
class PaymentReversal(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Awaiting approval")
        APPROVED = "approved", _("Approved and reversed")
        REJECTED = "rejected", _("Rejected")

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="reversals")
    reason = models.CharField(_("reason"), max_length=300)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    entry = models.OneToOneField(
        LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        verbose_name = _("payment reversal")
        verbose_name_plural = _("payment reversals")
        constraints = [
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True) | ~Q(decided_by=models.F("requested_by")),
                name="reversal_four_eyes",
            ),
            models.UniqueConstraint(
                fields=["payment"], condition=Q(status__in=["pending", "approved"]), name="one_live_reversal"
            ),
        ]

    def __str__(self):
        return f"{self.payment_id} {self.status}"


class Refund(models.Model):
    """The remaining balance paid back when an account closes."""

    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="refund")
    amount = models.DecimalField(_("amount"), **MONEY)
    method = models.CharField(_("method"), max_length=10, choices=Method.choices)
    payee = models.CharField(_("payee"), max_length=100)
    bank_account = models.CharField(_("bank account"), max_length=40, blank=True)
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("refund")
        verbose_name_plural = _("refunds")
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive")]

    def __str__(self):
        return f"{self.account_id} {self.amount}"
