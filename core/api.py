"""API plumbing shared by every app: staff permission and the error mapping."""

import structlog
from django.utils.translation import gettext_lazy as _
from rest_framework import permissions
from rest_framework.response import Response

from core.exceptions import ApplicationError, ValidationError
from core.permissions import actor_for

logger = structlog.get_logger(__name__)


class IsStaffMember(permissions.BasePermission):
    """Authenticated staff (any role); finer rules are checked by selectors and services."""

    def has_permission(self, request, view):
        return actor_for(request.user) is not None


def exception_handler(exc, context):
    # Imported here: rest_framework.views imports this module's permission class at load.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, ApplicationError):
        body = {"code": exc.code, "detail": str(exc.message)}
        if isinstance(exc, ValidationError) and exc.field_errors:
            body["errors"] = {k: [str(m) for m in v] for k, v in exc.field_errors.items()}
        if exc.extra:
            body.update(exc.extra)
        logger.info("api_application_error", code=exc.code)
        return Response(body, status=exc.status_code)
    from rest_framework.exceptions import APIException
    from rest_framework.exceptions import ValidationError as DRFValidationError

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, APIException):
        return response
    # One error shape for every API error: {code, detail[, errors]}.
    if isinstance(exc, DRFValidationError):
        data = response.data
        errors = data if isinstance(data, dict) else {"non_field_errors": data}
        response.data = {
            "code": "invalid",
            "detail": str(_("Please correct the errors below.")),
            "errors": errors,
        }
    else:
        codes = exc.get_codes()
        response.data = {
            "code": codes if isinstance(codes, str) else exc.default_code,
            "detail": str(exc.detail)
            if not isinstance(exc.detail, (list, dict))
            else str(exc.default_detail),
        }
    return response
