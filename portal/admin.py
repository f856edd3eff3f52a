"""Admin for portal sign-ins and their account bindings. Deleting a binding unbinds the
account from that sign-in (the customer can bind it again only with a fresh code)."""

from django.contrib import admin
from django.db.models import Count
from django.utils.translation import gettext_lazy as _

from portal.models import AccountBinding, OneTimeCode, PortalProfile


@admin.register(PortalProfile)
class PortalProfileAdmin(admin.ModelAdmin):
    list_display = ("mobile_phone", "user", "created_at", "binding_count")
    search_fields = ("mobile_phone", "user__username", "user__portal_bindings__account__number")
    readonly_fields = ("user", "mobile_phone", "created_at", "messages_seen_at")
    list_select_related = ("user",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False  # portal sign-ins are made by the customer, proven by a one-time code

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_bindings=Count("user__portal_bindings"))

    @admin.display(description=_("accounts"), ordering="n_bindings")
    def binding_count(self, obj):
        return obj.n_bindings


@admin.register(AccountBinding)
class AccountBindingAdmin(admin.ModelAdmin):
    list_display = ("account", "customer", "user", "bound_at")
    search_fields = ("account__number", "account__customer__number", "user__username")
    readonly_fields = ("user", "account", "bound_at")
    list_select_related = ("user", "account", "account__customer")
    date_hierarchy = "bound_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("customer"), ordering="account__customer__number")
    def customer(self, obj):
        return obj.account.customer.number


@admin.register(OneTimeCode)
class OneTimeCodeAdmin(admin.ModelAdmin):
    """Read-only: when codes went where, and whether they were used (never the code)."""

    list_display = (
        "created_at",
        "purpose",
        "phone",
        "requester",
        "customer",
        "used_at",
        "revoked_at",
        "failed_attempts",
    )
    list_filter = ("purpose",)
    search_fields = ("phone", "requester")
    exclude = ("code_hash",)
    list_select_related = ("customer",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
