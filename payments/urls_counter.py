"""The counter channel and payment history, at the root of /payments/."""

from django.urls import path

from payments import views_counter as views

urlpatterns = [
    path("take/<str:number>/", views.take, name="take"),
    path("receipts/<int:payment_id>/", views.receipt, name="receipt"),
    path("receipts/<int:payment_id>.pdf", views.receipt_pdf, name="receipt-pdf"),
    path("shift/", views.shift_page, name="shift"),
    path("shift/open/", views.shift_open, name="shift-open"),
    path("shifts/", views.shift_day, name="shift-day"),
    path("shifts/<int:shift_id>/", views.shift_report, name="shift-report"),
    path("shifts/<int:shift_id>/settle/", views.shift_settle, name="shift-settle"),
    path("history/", views.history, name="history"),
    path("accounts/<str:number>/", views.account_history, name="account-history"),
]
