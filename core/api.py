"""API plumbing shared by every app: staff permission and the error mapping."""

import structlog
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
    return drf_exception_handler(exc, context)
