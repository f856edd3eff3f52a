"""One tree of application errors, mapped once to HTTP (core.api) and once to pages
(core.middleware). Messages are written for the person who must act on them."""

from django.utils.translation import gettext_lazy as _


class ApplicationError(Exception):
    """Base of every error a service raises on purpose."""

    status_code = 400
    code = "application_error"
    default_message = _("The request could not be completed.")

    def __init__(self, message=None, *, code: str | None = None, extra: dict | None = None):
        self.message = message if message is not None else self.default_message
        if code:
            self.code = code
        self.extra = extra or {}
        super().__init__(str(self.message))


class ValidationError(ApplicationError):
    """Input that breaks a business rule; ``field_errors`` maps field -> messages."""

    status_code = 400
    code = "invalid"
    default_message = _("Please correct the errors below.")

    def __init__(self, message=None, *, field_errors: dict | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.field_errors = field_errors or {}


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"
    default_message = _("Not found.")


class PermissionDenied(ApplicationError):
    status_code = 403
    code = "permission_denied"
    default_message = _("You are not allowed to do this.")


class Conflict(ApplicationError):
    """The record changed since the caller read it, or a uniqueness rule was hit."""

    status_code = 409
    code = "conflict"
    default_message = _("The record was changed by someone else. Reload and try again.")


class RateLimited(ApplicationError):
    status_code = 429
    code = "rate_limited"
    default_message = _("Too many attempts. Try again later.")
