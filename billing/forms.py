"""Forms of the billing staff pages. Formats are checked here; business rules (amount in fen,
four eyes, scope) by the services."""

from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _

from billing.models import EntryKind
from billing.rating import model as rm

_DATE = forms.DateInput(attrs={"type": "date", "class": "form-control"})


class LedgerFilterForm(forms.Form):
    kind = forms.ChoiceField(
        label=_("Kind"),
        required=False,
        choices=[("", _("All kinds")), *EntryKind.choices],
        widget=forms.Select(attrs={"class": "form-select"}),
    )
    date_from = forms.DateField(label=_("From"), required=False, widget=_DATE)
    date_to = forms.DateField(label=_("To"), required=False, widget=_DATE)

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError(_("The start date must not be after the end date."))
        return data


class AdjustmentRequestForm(forms.Form):
    amount = forms.DecimalField(
        label=_("Amount (yuan; + credits the customer, - charges)"), max_digits=14, decimal_places=2
    )
    reason = forms.CharField(label=_("Reason"), max_length=300, widget=forms.TextInput)


class AdjustmentDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", _("Approve")), ("reject", _("Reject"))])
    note = forms.CharField(label=_("Note"), max_length=300, required=False)
    return_to = forms.ChoiceField(choices=[("account", "account"), ("queue", "queue")], required=False)


_KWH = {"max_digits": 14, "decimal_places": 2, "min_value": Decimal("0"), "required": False}


class TariffQuoteForm(forms.Form):
    period_start = forms.DateField(label=_("Period start"), widget=_DATE)
    period_end = forms.DateField(label=_("Period end (inclusive)"), widget=_DATE)
    kwh_sharp = forms.DecimalField(label=_("Sharp kWh"), **_KWH)
    kwh_peak = forms.DecimalField(label=_("Peak kWh"), **_KWH)
    kwh_flat = forms.DecimalField(label=_("Flat kWh (or the single register)"), **_KWH)
    kwh_valley = forms.DecimalField(label=_("Valley kWh"), **_KWH)
    kvarh = forms.DecimalField(label=_("Reactive energy (kvarh)"), **_KWH)
    max_demand_kw = forms.DecimalField(label=_("Maximum demand (kW)"), **_KWH)
    capacity_kva = forms.DecimalField(label=_("Contracted capacity (kVA)"), **_KWH)
    tier_kwh_used = forms.DecimalField(label=_("kWh already used in the tier period"), **_KWH)

    def clean(self):
        data = super().clean()
        start, end = data.get("period_start"), data.get("period_end")
        if start and end and end < start:
            raise forms.ValidationError(_("The period must not end before it starts."))
        if not any(data.get(f"kwh_{band}") for band in rm.BANDS):
            raise forms.ValidationError(_("Enter the kWh of at least one band."))
        return data

    def usage(self) -> rm.Usage:
        data = self.cleaned_data
        return rm.Usage(
            period_start=data["period_start"],
            period_end=data["period_end"],
            kwh={band: data[f"kwh_{band}"] for band in rm.BANDS if data.get(f"kwh_{band}") is not None},
            kvarh=data.get("kvarh"),
            max_demand_kw=data.get("max_demand_kw"),
            capacity_kva=data.get("capacity_kva"),
            tier_kwh_used=data.get("tier_kwh_used") or Decimal("0"),
        )
