from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

from publisher.views import home

urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("accounts.urls")),
    path("posts/", include("publisher.urls")),
    path("feedback/", include("feedback.urls")),
    path("reports/", include("reports.urls")),
    path("newsletters/", include("newsletters.urls")),
    path("outbox/", include("outbox.urls")),
    path("admin/", admin.site.urls),
    # Conveyor's dashboard, behind the admin login (staff with conveyor.view_dashboard).
    path("conveyor/", include("conveyor.contrib.django.dashboard")),
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),  # DEBUG only
]
