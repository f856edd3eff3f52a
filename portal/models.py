"""The customer portal's own data: who a portal user is and which accounts they may see.

A portal user is a Django ``User`` with a ``PortalProfile`` (never a ``StaffProfile``): the
staff pages see no actor for them, and the portal pages accept nobody else. What a portal
user may see is exactly their ``AccountBinding`` rows, made only after the customer proved
the binding (customer number, last digits of the ID document and a one-time code sent to the
customer's registered phone).
"""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from customers.models import Account


class PortalProfile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_profile"
    )
    # The phone the user proved with a one-time code; the sign-in name is this number.
    mobile_phone = models.CharField(_("mobile phone"), max_length=20, unique=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    # Portal messages newer than this are shown as unread.
    messages_seen_at = models.DateTimeField(_("messages read up to"), null=True, blank=True)

    class Meta:
        verbose_name = _("portal user")
        verbose_name_plural = _("portal users")

    def __str__(self):
        return self.mobile_phone


class AccountBinding(models.Model):
    """Portal user ``user`` may see and pay account ``account``."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_bindings"
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="portal_bindings")
    bound_at = models.DateTimeField(_("bound at"), auto_now_add=True)

    class Meta:
        verbose_name = _("account binding")
        verbose_name_plural = _("account bindings")
        ordering = ["account__number"]
        constraints = [
            models.UniqueConstraint(fields=["user", "account"], name="portal_binding_unique"),
        ]

    def __str__(self):
        return f"{self.user_id} → {self.account_id}"
