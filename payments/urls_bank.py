"""/payments/bank/: bank agency daily files, their reconciliation reports, clearing items."""

from django.urls import path

from payments import views_bank as views

urlpatterns = [
    path("", views.bank_file_list, name="bank-files"),
    path("files/<str:bank_code>/<str:business_date>/", views.bank_file_report, name="bank-file"),
    path("files/<str:bank_code>/<str:business_date>/report.csv", views.bank_file_csv, name="bank-file-csv"),
    path("items/<int:item_id>/post/", views.bank_item_post, name="bank-item-post"),
    path("items/<int:item_id>/clear/", views.bank_item_clear, name="bank-item-clear"),
]
