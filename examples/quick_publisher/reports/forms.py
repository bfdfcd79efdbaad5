from django import forms
from django.utils import timezone


class ReportForm(forms.Form):
    year = forms.IntegerField(min_value=1900, max_value=2999)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["year"].initial = timezone.localdate().year
