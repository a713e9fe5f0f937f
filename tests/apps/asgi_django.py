"""A one-file Django project served through its ASGI handler: an async view and a sync view."""

import asyncio

import django
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
    )
    django.setup()


async def async_view(request):
    await asyncio.sleep(0.01)
    return JsonResponse({"view": "async", "path": request.path, "method": request.method})


def sync_view(request):
    return HttpResponse(b"sync view: " + request.body, content_type="text/plain")


urlpatterns = [
    path("async/", async_view),
    path("sync/", sync_view),
]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
