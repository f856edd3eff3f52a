"""The customer portal's own data: who a portal user is and which accounts they may see.

A portal user is a Django ``User`` with a ``PortalProfile`` (never a ``StaffProfile``): the
staff pages see no actor for them, and the portal pages accept nobody else. What a portal
user may see is exactly their ``AccountBinding`` rows, made only after the customer proved
the binding (customer number, last digits of the ID document and a one-time code sent to the
customer's registered phone).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone
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


class CodePurpose(models.TextChoices):
    SIGNUP = "signup", _("Sign-up")
    RESET = "reset", _("Password reset")
    BIND = "bind", _("Add an account")


class OneTimeCode(models.Model):
    """A one-time code sent by SMS. Only a keyed hash of the code is stored.

    ``requester`` is the phone of whoever asked (the number typed in at sign-up or reset, the
    signed-in user's own number when adding an account); ``phone`` is where the code went
    (the customer's registered phone). A code is good once, until ``expires_at``, and dies
    after too many wrong entries or when a newer code replaces it."""

    purpose = models.CharField(_("purpose"), max_length=8, choices=CodePurpose.choices)
    requester = models.CharField(_("requested by phone"), max_length=20)
    phone = models.CharField(_("sent to phone"), max_length=20)
    customer = models.ForeignKey(
        "customers.Customer",
        verbose_name=_("customer"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("portal user"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    code_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"))
    used_at = models.DateTimeField(_("used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("replaced or dead"), null=True, blank=True)
    failed_attempts = models.PositiveSmallIntegerField(_("wrong entries"), default=0)

    class Meta:
        verbose_name = _("one-time code")
        verbose_name_plural = _("one-time codes")
        indexes = [
            models.Index(fields=["phone", "created_at"], name="portal_code_phone_idx"),
            models.Index(fields=["requester", "purpose", "created_at"], name="portal_code_requester_idx"),
        ]

    def __str__(self):
        return f"{self.purpose} {self.phone} {self.created_at:%Y-%m-%d %H:%M}"


class CodeRequester(models.Model):
    """One row per phone that ever asked for a code; locked (SELECT ... FOR UPDATE) while a
    code is requested or checked for that phone, so the limits hold across processes."""

    phone = models.CharField(_("phone"), max_length=20, unique=True)

    class Meta:
        verbose_name = _("code requester")
        verbose_name_plural = _("code requesters")

    def __str__(self):
        return self.phone


class AuthAttemptKind(models.TextChoices):
    CODE_REQUEST = "code_request", _("Code requested")
    CODE_FAILURE = "code_failure", _("Wrong code entered")


class AuthAttempt(models.Model):
    """A request for a code or a wrong code, whether or not the details matched a customer:
    the rate limits and the wrong-code lockout count these rows, so they treat a known and an
    unknown phone alike (and tell nothing about which is which)."""

    kind = models.CharField(_("kind"), max_length=16, choices=AuthAttemptKind.choices)
    purpose = models.CharField(_("purpose"), max_length=8, choices=CodePurpose.choices)
    requester = models.CharField(_("phone"), max_length=20)
    ip_address = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    created_at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("sign-up or reset attempt")
        verbose_name_plural = _("sign-up and reset attempts")
        indexes = [
            models.Index(fields=["kind", "requester", "created_at"], name="portal_attempt_phone_idx"),
            models.Index(fields=["kind", "ip_address", "created_at"], name="portal_attempt_ip_idx"),
        ]

    def __str__(self):
        return f"{self.kind} {self.requester}"
