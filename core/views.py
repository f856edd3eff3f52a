from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from core import selectors
from core.forms import StaffLoginForm
from core.permissions import Cap, require


@never_cache
def healthz(request):
    report = selectors.system_health()
    return JsonResponse(report, status=503 if report["status"] == "down" else 200)


class StaffLoginView(auth_views.LoginView):
    template_name = "core/login.html"
    authentication_form = StaffLoginForm
    redirect_authenticated_user = True


@login_required
def audit_log(request):
    require(request.user, Cap.AUDIT_VIEW)
    model = request.GET.get("model", "")
    username = request.GET.get("user", "")
    events = selectors.audit_events(model=model, username=username)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "core/audit_log.html",
        {"page": page, "model": model, "username": username, "querystring": params.urlencode()},
    )
