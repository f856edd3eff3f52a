from django.contrib import admin
from treebeard.admin import TreeAdmin
from treebeard.forms import movenodeform_factory

from core.models import OrgUnit, Sequence, StaffProfile, TransformerArea


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
