from django.urls import path

from payments import views_latency

urlpatterns = [path("", views_latency.restore_latency_page, name="restore-latency")]
