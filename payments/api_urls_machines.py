"""Terminal and IVR APIs under /api/v1/payments/ (device credentials)."""

from django.urls import path

from payments import api, api_bank

urlpatterns = [
    path("terminal/payments", api.TerminalPaymentApi.as_view(), name="api-payments-terminal-payments"),
    path(
        "terminal/accounts/<str:number>",
        api.TerminalAccountApi.as_view(),
        name="api-payments-terminal-account",
    ),
    path("ivr/balance", api.IvrBalanceApi.as_view(), name="api-payments-ivr-balance"),
    path("ivr/payments", api.IvrPaymentApi.as_view(), name="api-payments-ivr-payments"),
    path("bank/payments", api_bank.BankPaymentApi.as_view(), name="api-payments-bank-payments"),
    path("ivr/vouchers/redeem", api.IvrVoucherRedeemApi.as_view(), name="api-payments-ivr-voucher-redeem"),
]
