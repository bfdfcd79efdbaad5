from django.contrib import admin

from .models import Delivery, Newsletter


@admin.register(Newsletter)
class NewsletterAdmin(admin.ModelAdmin):
    list_display = ("post", "created_by", "created", "recipients", "sent", "finished")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("newsletter", "user", "sent_at")
