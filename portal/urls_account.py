from django.urls import path

from portal import views_account

urlpatterns = [
    path("", views_account.home, name="home"),
    path("accounts/<str:number>/usage/", views_account.usage, name="usage"),
    path("accounts/<str:number>/usage.csv", views_account.usage_csv, name="usage-csv"),
    path("accounts/<str:number>/statement/", views_account.statement, name="statement"),
    path("accounts/<str:number>/statement.pdf", views_account.statement_pdf_view, name="statement-pdf"),
]
