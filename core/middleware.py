import structlog
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin

from core.audit import audit_context
from core.exceptions import ApplicationError

logger = structlog.get_logger(__name__)


class RequestIdHeaderMiddleware:
    """Echo the request id (bound to every log line by django-structlog) in the response,
    so that a user's report or a client's log can be matched with the server's logs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id:
            response["X-Request-ID"] = request_id
        return response


class AuditContextMiddleware:
    """Opens one audit context per request so that every row a request changes is grouped,
    with the URL and the signed-in user. Services add role, org unit and hall."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return self.get_response(request)
        user = getattr(request, "user", None)
        user_id = user.pk if user is not None and user.is_authenticated else None
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        with audit_context(url=request.path, user=user_id, request_id=request_id):
            return self.get_response(request)


class ApplicationErrorMiddleware(MiddlewareMixin):
    """Pages: an ApplicationError that a view did not handle becomes a page with the message
    and the matching status. The API maps the same errors in core.api.exception_handler."""

    def process_exception(self, request, exception):
        if not isinstance(exception, ApplicationError):
            return None
        if request.path.startswith("/api/"):
            return None
        logger.info("application_error", code=exception.code, message=str(exception.message))
        return render(
            request,
            "core/error.html",
            {"error": exception},
            status=exception.status_code,
        )
