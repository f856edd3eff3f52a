from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import views as core_views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="customers:search", permanent=False)),
    path("healthz", core_views.healthz, name="healthz"),
    path("login/", core_views.StaffLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("audit/", include("core.urls")),
    path("customers/", include("customers.urls")),
    path("metering/", include("metering.urls")),
    path("billing/", include("billing.urls")),
    path("payments/", include("payments.urls")),
    path("portal/", include("portal.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("customers.api_urls")),
    path("api/v1/metering/", include("metering.api_urls")),
    path("api/v1/billing/", include("billing.api_urls")),
    path("api/v1/payments/", include("payments.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

admin.site.site_header = _("Kilowatt administration")
admin.site.site_title = _("Kilowatt")
