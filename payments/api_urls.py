"""Machine APIs of payments: terminals and IVR (device credentials), gateway notifications
(signed by the gateway)."""

from django.urls import include, path

urlpatterns = [
    path("", include("payments.api_urls_machines")),
    path("", include("payments.api_urls_gateway")),
]
