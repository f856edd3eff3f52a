from django.urls import path

from customers import views

app_name = "customers"

urlpatterns = [
    path("", views.customer_search, name="search"),
    path("new/", views.customer_create, name="create"),
    path("<str:number>/", views.customer_detail, name="detail"),
    path("<str:number>/edit/", views.customer_edit, name="edit"),
    path("<str:number>/contacts/", views.contact_add, name="contact-add"),
    path("<str:number>/contacts/<int:contact_id>/remove/", views.contact_remove, name="contact-remove"),
]
