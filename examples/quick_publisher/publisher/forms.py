from django import forms
from django.utils.text import slugify

from .models import Post

#: The first bytes of the image formats a cover may be in.
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")
#: Addresses under /posts/ that are pages, not posts.
RESERVED_SLUGS = frozenset({"new", "mine"})


class PostForm(forms.ModelForm):
    class Meta:
        model = Post
        fields = ("title", "slug", "content", "cover")
        widgets = {
            "content": forms.Textarea(attrs={"rows": 14}),
            "cover": forms.ClearableFileInput(attrs={"accept": "image/*"}),
        }
        help_texts = {"slug": "The post's address. Leave empty to make one from the title."}

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["slug"].required = False

    def clean_cover(self) -> object:
        cover = self.cleaned_data.get("cover")
        if cover and "cover" in self.changed_data:
            head = cover.read(12)
            cover.seek(0)
            if not head.startswith(IMAGE_SIGNATURES):
                raise forms.ValidationError("The cover must be a PNG, JPEG, GIF or WebP image.")
        return cover

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        title = data.get("title")
        if not data.get("slug") and isinstance(title, str):
            data["slug"] = self._unique_slug(slugify(title)[:200] or "post")
        return data

    def clean_slug(self) -> str:
        slug = self.cleaned_data.get("slug") or ""
        others = Post.objects.exclude(pk=self.instance.pk)
        if slug in RESERVED_SLUGS:
            raise forms.ValidationError("This address is taken by a page of the site.")
        if slug and others.filter(slug=slug).exists():
            raise forms.ValidationError("Another post already has this address.")
        return slug

    def _unique_slug(self, base: str) -> str:
        others = Post.objects.exclude(pk=self.instance.pk)
        slug, n = base, 1
        while slug in RESERVED_SLUGS or others.filter(slug=slug).exists():
            n += 1
            slug = f"{base}-{n}"
        return slug
