"""Staff forms. Formats are checked here for quick feedback; business rules are checked by
the services, whose field errors are copied back onto the form."""

from crispy_forms.helper import FormHelper
from crispy_forms.layout import Column, Fieldset, Layout, Row, Submit
from django import forms
from django.utils.translation import gettext_lazy as _

from core.models import TransformerArea
from core.permissions import org_scope_q
from customers.models import (
    ContactRole,
    CustomerCategory,
    CustomerStatus,
    IdType,
    ImportanceGrade,
    SettlementMode,
    VoltageLevel,
)


def apply_service_errors(form: forms.Form, exc) -> None:
    """Copy a services ValidationError onto a bound form."""
    placed = False
    for field, messages in exc.field_errors.items():
        for message in messages:
            form.add_error(field if field in form.fields else None, message)
            placed = True
    if not placed:
        form.add_error(None, str(exc.message))


class CustomerSearchForm(forms.Form):
    q = forms.CharField(
        label=_("Search"),
        required=False,
        max_length=100,
        widget=forms.TextInput(
            attrs={"placeholder": _("Customer or account number, phone, name or address"), "autofocus": True}
        ),
    )
    category = forms.ChoiceField(
        label=_("Category"), required=False, choices=[("", _("All categories")), *CustomerCategory.choices]
    )


class _CustomerFields(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    mobile_phone = forms.CharField(label=_("Mobile phone"), max_length=20)
    other_phone = forms.CharField(label=_("Other phone"), max_length=20, required=False)
    email = forms.EmailField(label=_("E-mail"), required=False)
    address = forms.CharField(label=_("Address"), max_length=200)
    category = forms.ChoiceField(label=_("Category"), choices=CustomerCategory.choices)
    voltage_level = forms.ChoiceField(label=_("Voltage level"), choices=VoltageLevel.choices)
    contracted_capacity_kva = forms.DecimalField(
        label=_("Contracted capacity (kVA)"), min_value=0, max_digits=10, decimal_places=2
    )
    importance_grade = forms.ChoiceField(
        label=_("Importance grade"), choices=ImportanceGrade.choices, initial=ImportanceGrade.ORDINARY
    )
    protected = forms.BooleanField(label=_("Protected (保电): never trip"), required=False)
    protected_reason = forms.CharField(label=_("Reason for protection"), max_length=200, required=False)


class CustomerCreateForm(_CustomerFields):
    id_type = forms.ChoiceField(label=_("ID document type"), choices=IdType.choices)
    id_number = forms.CharField(label=_("ID document number"), max_length=32)
    settlement_mode = forms.ChoiceField(
        label=_("Settlement mode"), choices=SettlementMode.choices, initial=SettlementMode.PREPAID
    )
    transformer_area = forms.ModelChoiceField(
        label=_("Transformer area"),
        queryset=TransformerArea.objects.select_related("supply_station").order_by("code"),
    )
    service_address = forms.CharField(
        label=_("Service point address (if different)"), max_length=200, required=False
    )
    ct_ratio = forms.IntegerField(label=_("CT ratio"), min_value=1, initial=1)
    pt_ratio = forms.IntegerField(label=_("PT ratio"), min_value=1, initial=1)

    def __init__(self, *args, actor=None, **kwargs):
        super().__init__(*args, **kwargs)
        if actor is not None:
            # Offer only the areas whose supply station the actor may register customers in.
            self.fields["transformer_area"].queryset = self.fields["transformer_area"].queryset.filter(
                org_scope_q(actor, "supply_station")
            )
        self.helper = FormHelper()
        self.helper.layout = Layout(
            Fieldset(
                _("Customer"),
                Row(Column("name"), Column("category")),
                Row(Column("id_type"), Column("id_number")),
                Row(Column("mobile_phone"), Column("other_phone"), Column("email")),
                "address",
                Row(Column("voltage_level"), Column("contracted_capacity_kva"), Column("importance_grade")),
                Row(Column("protected"), Column("protected_reason")),
            ),
            Fieldset(
                _("Account and service point"),
                Row(Column("settlement_mode"), Column("transformer_area")),
                "service_address",
                Row(Column("ct_ratio"), Column("pt_ratio")),
            ),
            Submit("submit", _("Create customer")),
        )


class CustomerEditForm(_CustomerFields):
    status = forms.ChoiceField(label=_("Status"), choices=CustomerStatus.choices)
    version = forms.IntegerField(widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.layout = Layout(
            "version",
            Row(Column("name"), Column("category"), Column("status")),
            Row(Column("mobile_phone"), Column("other_phone"), Column("email")),
            "address",
            Row(Column("voltage_level"), Column("contracted_capacity_kva"), Column("importance_grade")),
            Row(Column("protected"), Column("protected_reason")),
            Submit("submit", _("Save changes")),
        )


class ContactForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    role = forms.ChoiceField(label=_("Role"), choices=ContactRole.choices)
    phone = forms.CharField(label=_("Phone"), max_length=20)
    email = forms.EmailField(label=_("E-mail"), required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.form_tag = False
        self.helper.layout = Layout(
            Row(Column("name"), Column("role")),
            Row(Column("phone"), Column("email")),
            Submit("submit", _("Add contact")),
        )
