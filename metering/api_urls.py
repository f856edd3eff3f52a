from django.urls import path

from metering import api

urlpatterns = [
    path("reading-batches/", api.ReadingBatchCreateApi.as_view(), name="api-reading-batches"),
    path(
        "reading-batches/<str:source>/<str:batch_id>/",
        api.ReadingBatchDetailApi.as_view(),
        name="api-reading-batch-detail",
    ),
]
