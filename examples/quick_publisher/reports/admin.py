from django.contrib import admin

from .models import AnnualReport


@admin.register(AnnualReport)
class AnnualReportAdmin(admin.ModelAdmin):
    list_display = ("year", "created", "task_id")
