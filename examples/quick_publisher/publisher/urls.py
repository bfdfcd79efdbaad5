from django.urls import path

from . import views

app_name = "publisher"

urlpatterns = [
    path("new/", views.create_post, name="create"),
    path("mine/", views.my_posts, name="mine"),
    path("<slug:slug>/", views.view_post, name="post"),
    path("<slug:slug>/edit/", views.edit_post, name="edit"),
    path("<slug:slug>/summary.json", views.post_summary, name="summary"),
]
