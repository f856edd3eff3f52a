"""Staff pages of payments; each area keeps its own URL module."""

from django.urls import include, path

app_name = "payments"

urlpatterns = [
    path("", include("payments.urls_counter")),
    path("vouchers/", include("payments.urls_vouchers")),
    path("bank/", include("payments.urls_bank")),
    path("online/", include("payments.urls_gateway")),
    path("power-back/", include("payments.urls_latency")),
]
