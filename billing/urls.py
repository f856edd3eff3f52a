from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("accounts/<str:number>/", views.account_billing, name="account"),
    path("accounts/<str:number>/adjustments/", views.adjustment_create, name="adjustment-request"),
    path("adjustments/", views.adjustment_queue, name="adjustments"),
    path("adjustments/<int:adjustment_id>/decision/", views.adjustment_decision, name="adjustment-decision"),
    path("tariffs/", views.tariff_list, name="tariffs"),
    path("tariffs/<str:code>/", views.tariff_detail, name="tariff-detail"),
]
