"""Payments in the admin: banks and API clients are managed here; money records are read-only
(payments, reversals, refunds and vouchers change only through their services)."""

from django.contrib import admin

from payments.models import (
    Bank,
    BankFile,
    CashierShift,
    GatewayNotification,
    GatewayOrder,
    Payment,
    PaymentReversal,
    ReconciliationItem,
    Refund,
    TerminalDevice,
    Voucher,
    VoucherBatch,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Bank)
class BankAdmin(admin.ModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


@admin.register(TerminalDevice)
class TerminalDeviceAdmin(admin.ModelAdmin):
    list_display = ("code", "kind", "hall", "active", "created_at")
    list_filter = ("kind", "active")
    # The secret is created (and shown once) by `manage.py payment_device_create`.
    fields = ("code", "kind", "hall", "active")
    readonly_fields = ("code", "kind")

    def has_add_permission(self, request):
        return False


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ("channel", "external_id", "account", "amount", "method", "status", "posted_at")
    list_filter = ("channel", "method", "status")
    search_fields = ("external_id", "account__number")
    date_hierarchy = "posted_at"
    raw_id_fields = ("account", "entry", "restore_command")


@admin.register(CashierShift)
class CashierShiftAdmin(ReadOnlyAdmin):
    list_display = ("cashier", "hall", "opened_at", "status", "expected_cash", "counted_cash")
    list_filter = ("status",)


@admin.register(BankFile)
class BankFileAdmin(ReadOnlyAdmin):
    list_display = ("bank", "business_date", "line_count", "total_amount", "imported_at")


@admin.register(ReconciliationItem)
class ReconciliationItemAdmin(ReadOnlyAdmin):
    list_display = ("file", "kind", "cleared", "note")
    list_filter = ("kind", "cleared")


@admin.register(GatewayOrder)
class GatewayOrderAdmin(ReadOnlyAdmin):
    list_display = ("order_no", "provider", "account", "amount", "status", "created_at", "paid_at")
    list_filter = ("provider", "status")
    search_fields = ("order_no",)


@admin.register(GatewayNotification)
class GatewayNotificationAdmin(ReadOnlyAdmin):
    list_display = ("provider", "order_no", "outcome", "received_at", "remote_addr")
    list_filter = ("provider", "outcome")


@admin.register(VoucherBatch)
class VoucherBatchAdmin(ReadOnlyAdmin):
    list_display = ("code", "face_value", "quantity", "expires_on", "issued_at")


@admin.register(Voucher)
class VoucherAdmin(ReadOnlyAdmin):
    list_display = ("serial", "batch", "status", "sold_at", "redeemed_at")
    list_filter = ("status",)
    search_fields = ("serial",)
    exclude = ("pin_hash",)


@admin.register(PaymentReversal)
class PaymentReversalAdmin(ReadOnlyAdmin):
    list_display = ("payment", "status", "requested_by", "decided_by", "requested_at")


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("account", "amount", "method", "created_at")
