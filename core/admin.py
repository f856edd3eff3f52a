from django.contrib import admin
from treebeard.admin import TreeAdmin
from treebeard.forms import movenodeform_factory

from core.models import Notification, OrgUnit, Sequence, StaffProfile, TransformerArea


@admin.register(OrgUnit)
class OrgUnitAdmin(TreeAdmin):
    form = movenodeform_factory(OrgUnit)
    list_display = ["name", "code", "kind"]
    list_filter = ["kind"]
    search_fields = ["code", "name", "address"]


@admin.register(TransformerArea)
class TransformerAreaAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "supply_station", "transformer_capacity_kva"]
    list_filter = ["supply_station"]
    search_fields = ["code", "name"]
    list_select_related = ["supply_station"]
    autocomplete_fields = ["supply_station"]


@admin.register(StaffProfile)
class StaffProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "role", "org_unit"]
    list_filter = ["role", "org_unit__kind"]
    search_fields = ["user__username", "user__first_name", "user__last_name", "org_unit__name"]
    list_select_related = ["user", "org_unit"]
    autocomplete_fields = ["user", "org_unit"]


@admin.register(Sequence)
class SequenceAdmin(admin.ModelAdmin):
    list_display = ["name", "last_value"]
    search_fields = ["name"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """Read-only: the outbox is written by services and delivered by workers."""

    list_display = [
        "created_at",
        "channel",
        "topic",
        "recipient",
        "customer_id",
        "status",
        "attempts",
        "sent_at",
    ]
    list_filter = ["status", "channel", "topic"]
    search_fields = ["recipient", "dedupe_key", "=customer_id", "=account_id", "provider_message_id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Notification._meta.fields]
    show_full_result_count = False  # the outbox grows large; no COUNT(*) per page

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
