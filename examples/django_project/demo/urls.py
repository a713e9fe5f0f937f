from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.static import serve

from catalog import views

urlpatterns = [
    path("", views.index, name="index"),
    path("n-plus-one/", views.n_plus_one, name="n-plus-one"),
    path("slow-query/", views.slow_query, name="slow-query"),
    path("lock-hold/", views.lock_hold, name="lock-hold"),
    path("lock-wait/", views.lock_wait, name="lock-wait"),
    path("external/", views.external, name="external"),
    path("report/", views.report, name="report"),
    path("health/", views.health, name="health"),
    path("admin/", admin.site.urls),
]

if settings.SERVE_STATIC:
    # django.conf.urls.static.static() does nothing with DEBUG off, so route it by hand: this is
    # the "proxy forwards /static/ to the app" setup, where every file costs a worker thread.
    urlpatterns.append(
        re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT})
    )
