from django.urls import path

from . import views

app_name = "reports"

urlpatterns = [
    path("", views.report_index, name="index"),
    path("tasks/<str:task_id>/", views.report_progress, name="progress"),
    path("tasks/<str:task_id>/status.json", views.report_status, name="status"),
    path("<int:pk>/download/", views.download, name="download"),
]
