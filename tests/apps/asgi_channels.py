"""A one-file Django Channels project: an AsyncWebsocketConsumer echo routed by ProtocolTypeRouter/URLRouter,
and Django's own ASGI handler for HTTP."""

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=["channels"],
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402


def index(request):
    return HttpResponse(b"django http", content_type="text/plain")


urlpatterns = [path("", index)]


class Echo(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            await self.send(text_data="%s: %s" % (self.room, text_data))
        else:
            await self.send(bytes_data=bytes_data)


application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": URLRouter([path("ws/<str:room>/", Echo.as_asgi())]),
})
