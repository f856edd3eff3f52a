from crispy_forms.helper import FormHelper
from crispy_forms.layout import Submit
from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.utils.translation import gettext_lazy as _

from core.permissions import actor_for


class StaffLoginForm(AuthenticationForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.add_input(Submit("submit", _("Sign in")))

    def confirm_login_allowed(self, user):
        """Only staff (a staff profile or a superuser) sign in here; customers have the portal.
        They get the same error as a wrong password, so the form tells nothing about accounts."""
        super().confirm_login_allowed(user)
        if actor_for(user) is None:
            raise forms.ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )
