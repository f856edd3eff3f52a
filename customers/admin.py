"""Customer records are read-only here: changes go through the staff pages (and their
services), which validate, version and audit them with the acting unit."""

from django.contrib import admin

from customers.models import Account, Contact, Customer, ServicePoint


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AccountInline(admin.TabularInline):
    model = Account
    extra = 0
    fields = ["number", "settlement_mode", "status", "opened_on", "closed_on"]
    readonly_fields = fields
    can_delete = False


class ContactInline(admin.TabularInline):
    model = Contact
    extra = 0
    fields = ["name", "role", "phone", "email"]
    readonly_fields = fields
    can_delete = False


@admin.register(Customer)
class CustomerAdmin(ReadOnlyAdmin):
    list_display = ["number", "name", "category", "voltage_level", "org_unit", "protected", "status"]
    list_filter = ["category", "voltage_level", "importance_grade", "protected", "status", "org_unit__kind"]
    search_fields = ["number", "name", "mobile_phone", "address"]
    list_select_related = ["org_unit"]
    show_full_result_count = False
    inlines = [AccountInline, ContactInline]
    exclude = ["id_number_digest"]


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["number", "customer", "settlement_mode", "status", "opened_on", "closed_on"]
    list_filter = ["settlement_mode", "status"]
    search_fields = ["number", "customer__number", "customer__name"]
    list_select_related = ["customer"]
    show_full_result_count = False


@admin.register(ServicePoint)
class ServicePointAdmin(ReadOnlyAdmin):
    list_display = ["number", "customer", "account", "transformer_area", "ct_ratio", "pt_ratio", "status"]
    list_filter = ["status", "transformer_area__supply_station"]
    search_fields = ["number", "address", "customer__number", "account__number"]
    list_select_related = ["customer", "account", "transformer_area"]
    show_full_result_count = False


@admin.register(Contact)
class ContactAdmin(ReadOnlyAdmin):
    list_display = ["name", "role", "phone", "customer"]
    list_filter = ["role"]
    search_fields = ["name", "phone", "customer__number"]
    list_select_related = ["customer"]
    show_full_result_count = False
