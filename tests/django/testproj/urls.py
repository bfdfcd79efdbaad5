from django.contrib import admin
from django.urls import include, path

from .shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("ops/conveyor/", include("conveyor.contrib.django.dashboard")),
    path("orders/", views.create_order),
    path("orders/async/", views.create_order_async),
    path("tasks/<str:task_id>/", views.task_status),
    path("tasks/<str:task_id>/wait/", views.wait_for_task),
]
