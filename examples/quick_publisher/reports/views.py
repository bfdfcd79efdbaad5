from conveyor import states
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from .forms import ReportForm
from .models import AnnualReport
from .tasks import generate_report


@staff_member_required
@require_http_methods(["GET", "POST"])
def report_index(request: HttpRequest) -> HttpResponse:
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        year = form.cleaned_data["year"]
        result = generate_report.delay(year)
        if result.duplicate_of:  # a build of that year is under way: follow it
            messages.info(request, f"The {year} report is already being built: here it is.")
        return redirect("reports:progress", task_id=result.id)
    reports = AnnualReport.objects.all()[:20]
    return render(request, "reports/index.html", {"form": form, "reports": reports})


@staff_member_required
def report_progress(request: HttpRequest, task_id: str) -> HttpResponse:
    status_url = reverse("reports:status", kwargs={"task_id": task_id})
    return render(request, "reports/progress.html", {"task_id": task_id, "status_url": status_url})


@staff_member_required
def report_status(request: HttpRequest, task_id: str) -> JsonResponse:
    """The task's state as JSON: ``{"state", "percent", "step", "done", "url", "error"}``."""
    snap = generate_report.AsyncResult(task_id).snapshot()  # one read: all fields agree
    state = snap.state
    body: dict[str, object] = {"state": state, "percent": 0, "done": False}
    if state == "PROGRESS" and isinstance(snap.info, dict):
        body.update(percent=snap.info.get("percent", 0), step=snap.info.get("step", ""))
    elif state == states.SUCCESS and isinstance(snap.result, dict):
        body.update(percent=100, done=True, url=snap.result["url"])
    elif state in states.EXCEPTION_STATES:
        body.update(done=True, error=str(snap.result) or state.title())
    return JsonResponse(body)


@staff_member_required
def download(request: HttpRequest, pk: int) -> FileResponse:
    report = get_object_or_404(AnnualReport, pk=pk)
    return FileResponse(
        report.csv.open("rb"),
        as_attachment=True,
        filename=f"quickpublisher-annual-report-{report.year}.csv",
        content_type="text/csv",
    )
