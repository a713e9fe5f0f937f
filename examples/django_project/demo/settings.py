"""Settings of the example project, read from the environment.

`../stack up` sets every variable below (in ferricorn's `raw_env` and for `manage.py`); a deployment
sets them in the systemd unit's EnvironmentFile (see docs/deployment.md).

  DJANGO_SECRET_KEY      required
  DJANGO_ALLOWED_HOSTS   comma-separated, default "127.0.0.1,localhost"
  DJANGO_STATIC_ROOT     where collectstatic writes, default ./static-collected
  DJANGO_SERVE_STATIC    "1": Django itself serves /static/ (what a proxy that forwards /static/ needs;
                         a misconfiguration in production, kept to show its cost)
  DJANGO_DB_HOST, DJANGO_DB_PORT, DJANGO_DB_NAME, DJANGO_DB_USER, DJANGO_DB_PASSWORD
  DJANGO_EXTERNAL_URL    what /external/ calls when no ?url= is given (default: a silent socket)
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set: start the project with examples/django_project/stack up, "
        "or set it (and the DJANGO_DB_* variables) yourself"
    )

DEBUG = False
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]

# nginx sets these headers itself (overwriting what a client sent) and ferricorn only trusts them
# from --forwarded-allow-ips, so Django may believe them: the scheme decides secure cookies and
# redirects, the host decides absolute URLs.
USE_X_FORWARDED_HOST = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "catalog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DJANGO_DB_PORT", "5432"),
        "NAME": os.environ.get("DJANGO_DB_NAME", "demo"),
        "USER": os.environ.get("DJANGO_DB_USER", "demo"),
        "PASSWORD": os.environ.get("DJANGO_DB_PASSWORD", ""),
        # A connection per request: a worker killed after a timeout leaves no pooled connection
        # in the middle of a transaction behind.
        "CONN_MAX_AGE": 0,
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT", str(BASE_DIR / "static-collected"))
SERVE_STATIC = os.environ.get("DJANGO_SERVE_STATIC", "0") == "1"

EXTERNAL_SERVICE_URL = os.environ.get("DJANGO_EXTERNAL_URL", "")

# With DEBUG off Django would mail a 500's traceback to ADMINS and print nothing; send it to
# stderr instead, which ferricorn's capture_output puts in its error log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False}},
}
