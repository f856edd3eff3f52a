"""Who may see what in the portal: the signed-in portal user, their bound accounts, nothing else.

Every portal view is wrapped in ``portal_login_required`` and reaches an account only through
``bound_account_or_404`` (an account number not bound to the user is a 404, the same as one
that does not exist, so URLs tell nothing about other customers).
"""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.db.models import QuerySet
from django.http import Http404
from django.urls import reverse

from customers.models import Account
from portal.models import PortalProfile


def is_portal_user(user) -> bool:
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    cached = getattr(user, "_kilowatt_portal", None)
    if cached is None:
        cached = PortalProfile.objects.filter(user_id=user.pk).exists()
        user._kilowatt_portal = cached
    return cached


def portal_login_required(view):
    """Signed-in portal users only; anyone else goes to the portal's sign-in page."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not is_portal_user(request.user):
            return redirect_to_login(request.get_full_path(), reverse("portal:login"))
        return view(request, *args, **kwargs)

    return wrapper


def bound_accounts(user) -> QuerySet[Account]:
    """The accounts ``user`` may see, by number."""
    return (
        Account.objects.filter(portal_bindings__user_id=user.pk).select_related("customer").order_by("number")
    )


def bound_account_or_404(user, number: str) -> Account:
    account = bound_accounts(user).filter(number=number).first()
    if account is None:
        raise Http404("No such account.")
    return account
