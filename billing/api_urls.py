from django.urls import path

from billing import api

urlpatterns = [path("quote", api.QuoteApi.as_view(), name="api-billing-quote")]
