from django.urls import path

from . import views

app_name = "newsletters"

urlpatterns = [
    path("", views.newsletter_index, name="index"),
    path("send/<slug:slug>/", views.send_post, name="send"),
]
