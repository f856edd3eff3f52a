"""Money pages, messages and notification settings of the portal (namespace ``portal``)."""

from django.urls import path

from portal import views_money as views

urlpatterns = [
    path("accounts/<str:number>/pay/", views.pay, name="pay"),
    path("accounts/<str:number>/voucher/", views.voucher, name="voucher"),
    path("accounts/<str:number>/payments/", views.payments, name="payments"),
    # Before orders/<order_no>/: where the payment gateway sends the customer back.
    path("orders/return/", views.order_return, name="order-return"),
    path("orders/<str:order_no>/", views.order, name="order"),
    path("messages/", views.notifications, name="notifications"),
    path("settings/", views.preferences, name="preferences"),
]
