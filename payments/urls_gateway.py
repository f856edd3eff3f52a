"""/payments/online/: the simulated gateway's cashier page."""

from django.urls import path

from payments import views_gateway as views

urlpatterns = [
    path("sim/pay/<str:order_no>/", views.sim_cashier, name="online-sim-pay"),
]
