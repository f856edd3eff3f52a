from django.urls import path

from customers import api

urlpatterns = [
    path("customers/", api.CustomerListCreateApi.as_view(), name="api-customers"),
    path("customers/<str:number>/", api.CustomerDetailApi.as_view(), name="api-customer-detail"),
]
