"""Forms of the portal's sign-in, sign-up, password reset and account binding pages. They
check formats and passwords; whether details match a customer is the service's business."""

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from core.models import StaffProfile
from portal.models import PortalProfile
from portal.services.auth import CODE_DIGITS, portal_phone

_PHONE_ATTRS = {"inputmode": "tel", "autocomplete": "tel", "placeholder": "138 0000 0000"}


def login_username(raw: str) -> str:
    """The sign-in name for what was typed in the phone field: the phone in portal form if it
    is a mobile number, else the text as typed (which then simply fails to sign in)."""
    try:
        return portal_phone(raw)
    except ValidationError:
        return (raw or "").strip()


def _phone_field(**attrs):
    return forms.CharField(
        label=_("Mobile phone"),
        max_length=20,
        widget=forms.TextInput(attrs={**_PHONE_ATTRS, **attrs}),
    )


def _clean_phone(value: str) -> str:
    try:
        return portal_phone(value)
    except ValidationError:
        raise ValidationError(
            _("Enter a mainland mobile number: 11 digits starting with 1."), code="phone_invalid"
        ) from None


class PortalLoginForm(AuthenticationForm):
    """Phone and password. Only portal users sign in here; anyone else (staff) gets the same
    error as a wrong password."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": _("The phone number or the password is wrong."),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["username"].label = _("Mobile phone")
        self.fields["username"].widget.attrs.update({**_PHONE_ATTRS, "data-testid": "login-phone"})
        self.fields["password"].widget.attrs.update({"data-testid": "login-password"})

    def clean_username(self):
        return login_username(self.cleaned_data.get("username", ""))

    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        is_portal = PortalProfile.objects.filter(user_id=user.pk).exists()
        if not is_portal or StaffProfile.objects.filter(user_id=user.pk).exists():
            raise self.get_invalid_login_error()


class _PasswordPair(forms.Form):
    """A new password typed twice, checked by the site's password validators."""

    password1 = forms.CharField(
        label=_("New password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "data-testid": "password1"}),
        help_text=password_validation.password_validators_help_text_html,
    )
    password2 = forms.CharField(
        label=_("New password again"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "data-testid": "password2"}),
    )

    def __init__(self, *args, phone: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.phone = phone

    def clean(self):
        cleaned = super().clean()
        first, second = cleaned.get("password1"), cleaned.get("password2")
        if first and second and first != second:
            self.add_error("password2", _("The two passwords differ."))
        elif first:
            user = get_user_model()(username=self.phone)
            try:
                password_validation.validate_password(first, user)
            except ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned


def _code_field():
    return forms.CharField(
        label=_("Code from the SMS"),
        max_length=12,
        widget=forms.TextInput(
            attrs={
                "inputmode": "numeric",
                "autocomplete": "one-time-code",
                "pattern": "[0-9]*",
                "data-testid": "code-input",
                "autofocus": True,
            }
        ),
    )


def _clean_code(value: str) -> str:
    value = "".join(value.split())
    if not value.isdigit() or len(value) != CODE_DIGITS:
        raise ValidationError(_("The code has %(digits)d digits."), params={"digits": CODE_DIGITS})
    return value


class _CustomerCheck(forms.Form):
    customer_number = forms.CharField(
        label=_("Customer number"),
        max_length=16,
        help_text=_("On your bill or electricity card."),
        widget=forms.TextInput(attrs={"inputmode": "numeric", "data-testid": "customer-number"}),
    )
    id_last4 = forms.CharField(
        label=_("Last 4 characters of the ID document"),
        min_length=4,
        max_length=4,
        help_text=_("Of the document the account was opened with (an X counts as a character)."),
        widget=forms.TextInput(attrs={"autocomplete": "off", "data-testid": "id-last4"}),
    )

    def clean_customer_number(self):
        return self.cleaned_data["customer_number"].strip()

    def clean_id_last4(self):
        value = self.cleaned_data["id_last4"].strip().upper()
        if len(value) != 4 or not value.isalnum():
            raise ValidationError(_("Enter 4 letters or digits."))
        return value


class SignupForm(_CustomerCheck):
    phone = _phone_field(**{"data-testid": "signup-phone"})
    field_order = ["customer_number", "id_last4", "phone"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["phone"].help_text = _("The mobile phone registered with your electricity account.")

    def clean_phone(self):
        return _clean_phone(self.cleaned_data["phone"])


class SignupVerifyForm(_PasswordPair):
    code = _code_field()
    field_order = ["code", "password1", "password2"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password1"].label = _("Choose a password")
        self.fields["password2"].label = _("Password again")

    def clean_code(self):
        return _clean_code(self.cleaned_data["code"])


class ResetForm(forms.Form):
    phone = _phone_field(**{"data-testid": "reset-phone"})

    def clean_phone(self):
        return _clean_phone(self.cleaned_data["phone"])


class ResetVerifyForm(SignupVerifyForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password1"].label = _("New password")
        self.fields["password2"].label = _("New password again")


class BindForm(_CustomerCheck):
    pass


class BindVerifyForm(forms.Form):
    code = _code_field()

    def clean_code(self):
        return _clean_code(self.cleaned_data["code"])
