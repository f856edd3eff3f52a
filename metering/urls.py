from django.urls import path

from metering import views

app_name = "metering"

urlpatterns = [
    path("meters/", views.meter_list, name="meter-list"),
    path("meters/<str:asset_number>/", views.meter_detail, name="meter-detail"),
    path("meters/<str:asset_number>/control/", views.meter_control, name="meter-control"),
    path("collection/", views.collection_day, name="collection-day"),
]
