from django.urls import path

from . import views

app_name = "outbox"

urlpatterns = [
    path("", views.outbox, name="list"),
    path("latest.json", views.latest, name="latest"),
    path("<int:pk>/", views.message_detail, name="detail"),
]
