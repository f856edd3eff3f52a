"""Portal sign-in, sign-out, sign-up, password reset and adding accounts. Thin: forms in,
services (portal.services.auth) out. The two-step flows keep their state in the session,
never in the page, and step 1 always answers the same way (no account enumeration)."""

import math

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_ip_address, get_cool_off
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from core.exceptions import ApplicationError, RateLimited
from portal.access import is_portal_user, portal_login_required
from portal.forms_auth import (
    BindForm,
    BindVerifyForm,
    PortalLoginForm,
    ResetForm,
    ResetVerifyForm,
    SignupForm,
    SignupVerifyForm,
    login_username,
)
from portal.models import CodePurpose
from portal.services.auth import (
    PendingCode,
    bind_code_request,
    bind_complete,
    masked_phone,
    reset_code_request,
    reset_complete,
    setting,
    signup_code_request,
    signup_complete,
)

_SESSION_KEYS = {
    CodePurpose.SIGNUP: "portal_pending_signup",
    CodePurpose.RESET: "portal_pending_reset",
    CodePurpose.BIND: "portal_pending_bind",
}
# Sign-ins made here, not by authenticate(): name the backend (there are two).
_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _ip(request) -> str | None:
    return get_client_ip_address(request)


def _pending(request, purpose: str) -> PendingCode | None:
    return PendingCode.from_session(request.session.get(_SESSION_KEYS[purpose]), purpose)


def _apply_error(form, exc: ApplicationError) -> None:
    field_errors = getattr(exc, "field_errors", None) or {}
    if field_errors:
        for field, errors in field_errors.items():
            for error in errors:
                form.add_error(field if field in form.fields else None, error)
    else:
        form.add_error(None, str(exc.message))


def _status(exc: ApplicationError) -> int:
    return 429 if isinstance(exc, RateLimited) else 200


def _ttl_minutes() -> int:
    return setting("PORTAL_CODE_TTL_SECONDS") // 60


# --- sign-in and sign-out -----------------------------------------------------------------


class PortalLoginView(auth_views.LoginView):
    """Phone and password. django-axes counts the failures (through ``authenticate``); a
    locked-out phone or address gets the portal's own lockout page (429), even with the right
    password."""

    template_name = "portal/auth/login.html"
    authentication_form = PortalLoginForm

    def get(self, request, *args, **kwargs):
        if is_portal_user(request.user):
            return redirect(self.get_success_url())
        return super().get(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        credentials = {"username": login_username(request.POST.get("username", ""))}
        if AxesProxyHandler.is_locked(request, credentials):
            return self._locked_out(request)
        response = super().post(request, *args, **kwargs)
        if getattr(request, "axes_locked_out", False):
            # This failure locked it: answer with the portal's page, not the staff one.
            request.axes_locked_out = False
            return self._locked_out(request)
        return response

    def _locked_out(self, request):
        cool_off = get_cool_off(request)
        minutes = max(1, math.ceil(cool_off.total_seconds() / 60)) if cool_off else None
        return render(request, "portal/auth/locked_out.html", {"minutes": minutes}, status=429)

    def get_redirect_url(self):
        """``next`` only if it is on this site and inside the portal."""
        target = self.request.POST.get(
            self.redirect_field_name, self.request.GET.get(self.redirect_field_name)
        )
        if (
            target
            and target.startswith("/portal/")
            and url_has_allowed_host_and_scheme(
                target,
                allowed_hosts=self.get_success_url_allowed_hosts(),
                require_https=self.request.is_secure(),
            )
        ):
            return target
        return ""

    def get_default_redirect_url(self):
        return reverse("portal:home")


class PortalLogoutView(auth_views.LogoutView):
    next_page = "portal:login"


# --- sign-up ------------------------------------------------------------------------------


@never_cache
@require_http_methods(["GET", "POST"])
def signup(request):
    if is_portal_user(request.user):
        return redirect("portal:home")
    form = SignupForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            pending = signup_code_request(
                customer_number=form.cleaned_data["customer_number"],
                id_last4=form.cleaned_data["id_last4"],
                phone=form.cleaned_data["phone"],
                ip_address=_ip(request),
            )
        except ApplicationError as exc:
            _apply_error(form, exc)
            status = _status(exc)
        else:
            request.session[_SESSION_KEYS[CodePurpose.SIGNUP]] = pending.to_session()
            return redirect("portal:signup-verify")
    return render(request, "portal/auth/signup.html", {"form": form}, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def signup_verify(request):
    pending = _pending(request, CodePurpose.SIGNUP)
    if pending is None:
        messages.info(request, _("Start with your customer number and phone."))
        return redirect("portal:signup")
    form = SignupVerifyForm(request.POST or None, phone=pending.requester)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            result = signup_complete(
                pending=pending,
                code=form.cleaned_data["code"],
                password=form.cleaned_data["password1"],
                ip_address=_ip(request),
            )
        except ApplicationError as exc:
            _apply_error(form, exc)
            status = _status(exc)
        else:
            request.session.pop(_SESSION_KEYS[CodePurpose.SIGNUP], None)
            numbers = ", ".join(account.number for account in result.accounts)
            if result.created:
                login(request, result.user, backend=_BACKEND)
                messages.success(
                    request,
                    _("Welcome! You are signed in. Accounts added: %(numbers)s.") % {"numbers": numbers},
                )
                return redirect("portal:home")
            messages.info(
                request,
                _(
                    "This phone already has a sign-in. Accounts %(numbers)s were added to it: sign in "
                    "with your existing password (or reset it if you forgot it)."
                )
                % {"numbers": numbers},
            )
            return redirect("portal:login")
    return render(
        request,
        "portal/auth/signup_verify.html",
        {"form": form, "phone": masked_phone(pending.requester), "minutes": _ttl_minutes()},
        status=status,
    )


# --- password reset -----------------------------------------------------------------------


@never_cache
@require_http_methods(["GET", "POST"])
def reset(request):
    form = ResetForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            pending = reset_code_request(phone=form.cleaned_data["phone"], ip_address=_ip(request))
        except ApplicationError as exc:
            _apply_error(form, exc)
            status = _status(exc)
        else:
            request.session[_SESSION_KEYS[CodePurpose.RESET]] = pending.to_session()
            return redirect("portal:reset-verify")
    return render(request, "portal/auth/reset.html", {"form": form}, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def reset_verify(request):
    pending = _pending(request, CodePurpose.RESET)
    if pending is None:
        messages.info(request, _("Start with your phone number."))
        return redirect("portal:reset")
    form = ResetVerifyForm(request.POST or None, phone=pending.requester)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            user = reset_complete(
                pending=pending,
                code=form.cleaned_data["code"],
                password=form.cleaned_data["password1"],
                ip_address=_ip(request),
            )
        except ApplicationError as exc:
            _apply_error(form, exc)
            status = _status(exc)
        else:
            request.session.pop(_SESSION_KEYS[CodePurpose.RESET], None)
            login(request, user, backend=_BACKEND)
            messages.success(request, _("Your password was changed and you are signed in."))
            return redirect("portal:home")
    return render(
        request,
        "portal/auth/reset_verify.html",
        {"form": form, "phone": masked_phone(pending.requester), "minutes": _ttl_minutes()},
        status=status,
    )


# --- adding another customer's accounts ---------------------------------------------------


@never_cache
@portal_login_required
@require_http_methods(["GET", "POST"])
def bind(request):
    form = BindForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            pending = bind_code_request(
                user=request.user,
                customer_number=form.cleaned_data["customer_number"],
                id_last4=form.cleaned_data["id_last4"],
                ip_address=_ip(request),
            )
        except ApplicationError as exc:
            _apply_error(form, exc)
            status = _status(exc)
        else:
            request.session[_SESSION_KEYS[CodePurpose.BIND]] = pending.to_session()
            return redirect("portal:bind-verify")
    return render(request, "portal/auth/bind.html", {"form": form}, status=status)


@never_cache
@portal_login_required
@require_http_methods(["GET", "POST"])
def bind_verify(request):
    pending = _pending(request, CodePurpose.BIND)
    if pending is None:
        return redirect("portal:bind")
    form = BindVerifyForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            accounts = bind_complete(
                user=request.user, pending=pending, code=form.cleaned_data["code"], ip_address=_ip(request)
            )
        except (ApplicationError, ValueError) as exc:
            if isinstance(exc, ValueError):  # the session's code belongs to another sign-in
                request.session.pop(_SESSION_KEYS[CodePurpose.BIND], None)
                return redirect("portal:bind")
            _apply_error(form, exc)
            status = _status(exc)
        else:
            request.session.pop(_SESSION_KEYS[CodePurpose.BIND], None)
            messages.success(
                request,
                ngettext(
                    "%(count)d account added: %(numbers)s.",
                    "%(count)d accounts added: %(numbers)s.",
                    len(accounts),
                )
                % {"count": len(accounts), "numbers": ", ".join(a.number for a in accounts)},
            )
            return redirect("portal:home")
    return render(
        request, "portal/auth/bind_verify.html", {"form": form, "minutes": _ttl_minutes()}, status=status
    )
