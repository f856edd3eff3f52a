"""Online payment APIs under /api/v1/payments/: gateway notifications (signed) and order status."""

from django.urls import path

from payments import api

urlpatterns = [
    path("online/orders/<str:order_no>", api.OnlineOrderApi.as_view(), name="api-payments-online-order"),
    path("online/<str:provider>/notify", api.OnlineNotifyApi.as_view(), name="api-payments-online-notify"),
]
