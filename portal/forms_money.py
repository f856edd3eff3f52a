"""Forms of the portal's money pages. Formats are checked here; business rules (the online
channel's limit, voucher check digits, lockouts, e-mail on record) by the services, whose
errors are copied back onto the form with ``apply_service_errors``."""

from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _

from core.money import format_yuan

QUICK_AMOUNTS = (Decimal("50.00"), Decimal("100.00"), Decimal("200.00"))
_DIGITS = {"inputmode": "numeric", "autocomplete": "off"}


def apply_service_errors(form: forms.Form, exc) -> None:
    """Copy a service's error onto a bound form: its message on top, its field errors on the
    fields (or on top, for a field the form does not have)."""
    form.add_error(None, str(exc.message))
    for field, messages in getattr(exc, "field_errors", {}).items():
        for message in messages:
            form.add_error(field if field in form.fields else None, message)


class PayForm(forms.Form):
    """A quick amount (50 / 100 / 200 yuan) or an amount typed in; the typed one wins."""

    quick = forms.ChoiceField(
        label=_("Amount"),
        required=False,
        widget=forms.RadioSelect,
        choices=[(f"{a:.2f}", format_yuan(a)) for a in QUICK_AMOUNTS],
    )
    amount = forms.DecimalField(
        label=_("Other amount (yuan)"),
        required=False,
        max_digits=12,
        decimal_places=2,
        min_value=Decimal("0.01"),
        widget=forms.NumberInput(
            attrs={"inputmode": "decimal", "step": "0.01", "min": "0.01", "placeholder": "0.00"}
        ),
        error_messages={
            "invalid": _("Enter the amount in yuan, e.g. 85.50."),
            "min_value": _("The amount must be positive."),
            "max_decimal_places": _("At most two decimal places (fen)."),
        },
    )

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        amount = data.get("amount")
        if amount is None:
            amount = Decimal(data["quick"]) if data.get("quick") else None
        if amount is None:
            raise forms.ValidationError(_("Choose an amount or type one in."), code="required")
        data["amount"] = amount
        return data


class VoucherForm(forms.Form):
    serial = forms.CharField(
        label=_("Voucher serial number"),
        max_length=30,
        widget=forms.TextInput(attrs={**_DIGITS, "autofocus": True}),
    )
    # Never sent back to the browser: a failed attempt shows an empty PIN field.
    pin = forms.CharField(
        label=_("PIN (scratch-off)"),
        max_length=40,
        widget=forms.PasswordInput(attrs=_DIGITS, render_value=False),
    )


class PreferencesForm(forms.Form):
    """One customer's choice; the portal always keeps a copy of every notice."""

    by_sms = forms.BooleanField(label=_("By SMS"), required=False)
    by_email = forms.BooleanField(label=_("By e-mail"), required=False)

    def __init__(self, *args, customer, **kwargs):
        kwargs.setdefault(
            "initial",
            {
                "by_sms": customer.notify_by_sms,
                "by_email": customer.notify_by_email,
            },
        )
        kwargs.setdefault("prefix", f"c{customer.pk}")
        super().__init__(*args, **kwargs)
        self.customer = customer
        if not customer.email:
            # Nothing to send to: the box shows the stored choice and cannot be changed here.
            self.fields["by_email"].disabled = True
            self.fields["by_email"].help_text = _(
                "No e-mail address on record; ask at a service hall to add one."
            )
