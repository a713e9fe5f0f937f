"""A one-file Django project whose view calls its own server over HTTP (as a Django view calling a
"microservice" that is really itself), for the loopback matrix. SELF_URL is the server's base URL.

Served as ``selfcall_django:application``.
"""

import os
import uuid

import django
import requests
from django.conf import settings

SELF_URL = os.environ.get("SELF_URL", "")

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="loopback-matrix-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
    )
    django.setup()

from django.http import JsonResponse  # noqa: E402  (after settings)
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

POOL = requests.Session()


@csrf_exempt
def hello(request):
    return JsonResponse({"session_id": str(uuid.uuid4()), "pid": os.getpid()}, status=201)


@csrf_exempt
def call(request):
    client = POOL if request.GET.get("via") == "session" else requests
    r = client.post(SELF_URL + "/hello/", timeout=20)
    return JsonResponse({**r.json(), "outer_pid": os.getpid()}, status=r.status_code)


def fast(request):
    return JsonResponse({"ok": True})


urlpatterns = [
    path("hello/", hello),
    path("call/", call),
    path("fast/", fast),
]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
