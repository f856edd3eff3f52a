"""Forms of the voucher, reversal and refund pages. Formats are checked here; business rules
(limits, check digits, four eyes, balances) by the services, whose field errors are copied
back onto the form."""

from datetime import timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from payments.models import Method

_DATE = forms.DateInput(attrs={"type": "date"})
_DIGITS = {"inputmode": "numeric", "autocomplete": "off"}


def apply_service_errors(form: forms.Form, exc) -> None:
    """Copy a service's error onto a bound form: its message on top (unless it only says "see
    below"), its field errors on the fields."""
    message = str(exc.message)
    if message != str(_("Please correct the errors below.")) or not getattr(exc, "field_errors", None):
        form.add_error(None, message)
    for field, messages in getattr(exc, "field_errors", {}).items():
        for field_message in messages:
            form.add_error(field if field in form.fields else None, field_message)


class VoucherBatchIssueForm(forms.Form):
    face_value = forms.DecimalField(label=_("Face value (yuan)"), max_digits=14, decimal_places=2)
    quantity = forms.IntegerField(label=_("Quantity"), min_value=1)
    expires_on = forms.DateField(label=_("Valid through"), widget=_DATE)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("expires_on", timezone.localdate() + timedelta(days=365))


class VoucherSellForm(forms.Form):
    serial = forms.CharField(
        label=_("Voucher serial number"),
        max_length=30,
        widget=forms.TextInput(attrs={**_DIGITS, "autofocus": True}),
    )


class VoucherRedeemForm(forms.Form):
    serial = forms.CharField(
        label=_("Voucher serial number"),
        max_length=30,
        widget=forms.TextInput(attrs={**_DIGITS, "autofocus": True}),
    )
    pin = forms.CharField(
        label=_("PIN (scratch-off)"),
        max_length=40,
        widget=forms.PasswordInput(attrs=_DIGITS, render_value=False),
    )
    account_number = forms.CharField(label=_("Account number"), max_length=20)


class VoucherVoidForm(forms.Form):
    serial = forms.CharField(label=_("Voucher serial number"), max_length=30, required=False)
    batch = forms.CharField(label=_("or the whole batch (batch code)"), max_length=32, required=False)
    reason = forms.CharField(label=_("Reason"), max_length=200)

    def clean(self):
        data = super().clean()
        if bool(data.get("serial")) == bool(data.get("batch")):
            raise forms.ValidationError(_("Enter either a serial number or a batch code."))
        return data


class ReversalRequestForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=300, widget=forms.Textarea(attrs={"rows": 2}))


class ReversalDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", _("Approve")), ("reject", _("Reject"))])


class RefundForm(forms.Form):
    method = forms.ChoiceField(
        label=_("Paid out by"),
        choices=[(Method.CASH, Method.CASH.label), (Method.TRANSFER, Method.TRANSFER.label)],
    )
    payee = forms.CharField(label=_("Payee"), max_length=100)
    bank_account = forms.CharField(
        label=_("Payee's bank account (for a transfer)"), max_length=40, required=False
    )
