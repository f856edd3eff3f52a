"""Terminal and IVR APIs under /api/v1/payments/ (device credentials)."""

from django.urls import path

from payments import api

urlpatterns = [
    path("terminal/payments", api.TerminalPaymentApi.as_view(), name="api-payments-terminal-payments"),
    path(
        "terminal/accounts/<str:number>",
        api.TerminalAccountApi.as_view(),
        name="api-payments-terminal-account",
    ),
    path("ivr/balance", api.IvrBalanceApi.as_view(), name="api-payments-ivr-balance"),
    path("ivr/payments", api.IvrPaymentApi.as_view(), name="api-payments-ivr-payments"),
    path("ivr/vouchers/redeem", api.IvrVoucherRedeemApi.as_view(), name="api-payments-ivr-voucher-redeem"),
]
