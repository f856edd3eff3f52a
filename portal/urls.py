"""The customer portal under /portal/: sign-up and sign-in, accounts and usage, money."""

from django.urls import include, path

app_name = "portal"

urlpatterns = [
    path("", include("portal.urls_account")),
    path("", include("portal.urls_auth")),
    path("", include("portal.urls_money")),
]
