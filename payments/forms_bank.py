"""Forms of the bank reconciliation pages. The file's layout is checked by the service
(payments.services.bank), whose line-numbered errors are copied onto the form."""

from datetime import timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from payments.models import Bank, ReconciliationItem

_DATE = forms.DateInput(attrs={"type": "date"})


class BankFileImportForm(forms.Form):
    bank = forms.ModelChoiceField(
        label=_("Bank"), queryset=Bank.objects.order_by("code"), to_field_name="code"
    )
    business_date = forms.DateField(label=_("Business date"), widget=_DATE)
    file = forms.FileField(label=_("Bank file (CSV)"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("business_date", timezone.localdate() - timedelta(days=1))


class BankFileFilterForm(forms.Form):
    bank = forms.ModelChoiceField(
        label=_("Bank"), queryset=Bank.objects.order_by("code"), to_field_name="code", required=False
    )
    date_from = forms.DateField(label=_("From"), widget=_DATE, required=False)
    date_to = forms.DateField(label=_("To"), widget=_DATE, required=False)


class ItemFilterForm(forms.Form):
    kind = forms.ChoiceField(
        label=_("Kind"), choices=[("", _("All"))] + list(ReconciliationItem.Kind.choices), required=False
    )
    open = forms.BooleanField(label=_("Open items only"), required=False)


class ItemClearForm(forms.Form):
    note = forms.CharField(label=_("How was it settled?"), max_length=300)
