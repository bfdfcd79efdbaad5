from django.contrib import admin

from .models import Feedback


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = ("email", "name", "created", "thanked_at", "staff_notified_at")
    readonly_fields = ("thanked_at", "staff_notified_at")
