from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .forms import SignUpForm
from .models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "full_name", "is_verified", "is_staff", "date_joined")
    list_filter = ("is_verified", "is_staff", "is_active")
    search_fields = ("email", "full_name")
    readonly_fields = ("verification_uuid", "date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("email", "password", "full_name")}),
        ("Verification", {"fields": ("is_verified", "verification_uuid")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_form = SignUpForm
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "full_name", "password1", "password2")}),
    )
