"""Staff pages for the customer register. Thin: forms in, services/selectors, templates out."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from core.exceptions import ApplicationError, Conflict, ValidationError
from core.permissions import Cap, require
from customers import selectors, services
from customers.forms import (
    ContactForm,
    CustomerCreateForm,
    CustomerEditForm,
    CustomerSearchForm,
    apply_service_errors,
)
from customers.models import Contact

SEARCH_PAGE_SIZE = 25


@login_required
def customer_search(request):
    actor = require(request.user, Cap.CUSTOMER_VIEW)
    form = CustomerSearchForm(request.GET or None)
    query = category = ""
    if form.is_valid():
        query = form.cleaned_data["q"]
        category = form.cleaned_data["category"]
    qs = selectors.customer_search(actor=actor, query=query, category=category)
    page = Paginator(qs, SEARCH_PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "customers/search.html",
        {"form": form, "page": page, "query": query, "querystring": params.urlencode()},
    )


@login_required
def customer_detail(request, number):
    actor = require(request.user, Cap.CUSTOMER_VIEW)
    customer = selectors.customer_get(actor=actor, number=number)
    history = list(selectors.customer_history(actor=actor, customer=customer)[:50])
    return render(
        request,
        "customers/detail.html",
        {
            "customer": customer,
            "history": history,
            "can_change": actor.has(Cap.CUSTOMER_CHANGE),
            "contact_form": ContactForm(),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def customer_create(request):
    actor = require(request.user, Cap.CUSTOMER_CREATE)
    form = CustomerCreateForm(request.POST or None, actor=actor)
    if request.method == "POST" and form.is_valid():
        try:
            customer = services.customer_create(actor=actor, **form.cleaned_data)
        except ValidationError as exc:
            apply_service_errors(form, exc)
        except ApplicationError as exc:
            form.add_error(None, str(exc.message))
        else:
            messages.success(request, _("Customer %(n)s created.") % {"n": customer.number})
            return redirect("customers:detail", number=customer.number)
    return render(request, "customers/form.html", {"form": form, "title": _("New customer")})


@login_required
@require_http_methods(["GET", "POST"])
def customer_edit(request, number):
    actor = require(request.user, Cap.CUSTOMER_CHANGE)
    customer = selectors.customer_get(actor=actor, number=number)
    initial = {f: getattr(customer, f) for f in CustomerEditForm.base_fields if hasattr(customer, f)}
    initial["version"] = customer.version
    form = CustomerEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        version = data.pop("version")
        try:
            services.customer_update(actor=actor, customer=customer, expected_version=version, **data)
        except ValidationError as exc:
            apply_service_errors(form, exc)
        except Conflict as exc:
            form.add_error(None, str(exc.message))
        else:
            messages.success(request, _("Changes saved."))
            return redirect("customers:detail", number=customer.number)
    return render(
        request,
        "customers/form.html",
        {"form": form, "title": _("Edit customer %(n)s") % {"n": customer.number}, "customer": customer},
    )


@login_required
@require_POST
def contact_add(request, number):
    actor = require(request.user, Cap.CUSTOMER_CHANGE)
    customer = selectors.customer_get(actor=actor, number=number)
    form = ContactForm(request.POST)
    if form.is_valid():
        try:
            services.contact_add(actor=actor, customer=customer, **form.cleaned_data)
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, _("Contact added."))
            return redirect("customers:detail", number=customer.number)
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, error)
    return redirect("customers:detail", number=customer.number)


@login_required
@require_POST
def contact_remove(request, number, contact_id):
    actor = require(request.user, Cap.CUSTOMER_CHANGE)
    customer = selectors.customer_get(actor=actor, number=number)
    contact = get_object_or_404(Contact, pk=contact_id, customer=customer)
    try:
        services.contact_remove(actor=actor, contact=contact)
    except ValidationError as exc:
        messages.error(request, str(exc.message))
    else:
        messages.success(request, _("Contact removed."))
    return redirect("customers:detail", number=customer.number)
