"""One view per cause of a worker timeout in the Django field report, plus a normal page.

Each view does the slow thing the plain way a real app would (no timeouts, no select_related), so
that ferricorn's timeout forensics show what they look like.
"""

import os
import socket
import threading
import time
import urllib.parse
import urllib.request

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import render

from .models import Book


class BadParam(ValueError):
    pass


def _number(request, name, default, kind, low, high):
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadParam(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise BadParam(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def _bad_param(view):
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except BadParam as e:
            return HttpResponseBadRequest(f"{e}\n", content_type="text/plain")

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def index(request):
    """The normal page: one query, a template, a static stylesheet."""
    books = Book.objects.select_related("author").order_by("title")[:10]
    return render(request, "catalog/index.html", {"books": books})


def n_plus_one(request):
    """Every book's author read one by one: 1 query for the books + 1 per book."""
    queries = []

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        rows = [(book.title, book.author.name) for book in Book.objects.all()]
    return render(request, "catalog/n_plus_one.html", {"rows": rows, "query_count": len(queries)})


@_bad_param
def slow_query(request):
    """A query that takes `seconds` in the database (a missing index, a huge scan)."""
    seconds = _number(request, "seconds", 5.0, float, 0.0, 3600.0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
    return JsonResponse({"slept": seconds})


def _first_book_for_update(**kwargs):
    return Book.objects.select_for_update(**kwargs).order_by("id").first()


@_bad_param
def lock_hold(request):
    """Lock the first book row for `seconds` in another transaction, then answer at once.

    The transaction runs in a background thread with its own database connection, so the request
    ends as soon as the lock is taken and the caller knows the contention exists; /lock-wait/ then
    blocks until the lock is released. 409 if another holder already has the row.
    """
    seconds = _number(request, "seconds", 10.0, float, 0.0, 3600.0)
    taken = threading.Event()
    outcome = {}

    def hold():
        try:
            with transaction.atomic():
                book = _first_book_for_update(nowait=True)
                outcome["book"] = book.pk if book else None
                taken.set()
                time.sleep(seconds)
        except DatabaseError as e:
            outcome["error"] = str(e).strip()
            taken.set()
        finally:
            # the connection belongs to this thread: close it, or it stays open until the worker exits
            connection.close()

    threading.Thread(target=hold, name="lock-hold", daemon=True).start()
    if not taken.wait(30):
        return JsonResponse({"error": "could not reach the database within 30 s"}, status=503)
    if "error" in outcome:
        return JsonResponse({"error": outcome["error"]}, status=409)
    return JsonResponse({"locked_book": outcome["book"], "seconds": seconds, "worker": os.getpid()})


def lock_wait(request):
    """Update the first book, waiting as long as another transaction holds its row lock."""
    with transaction.atomic():
        book = _first_book_for_update()
        if book is not None:
            book.stock += 1
            book.save(update_fields=["stock"])
    return JsonResponse({"updated_book": book.pk if book else None})


_silent_lock = threading.Lock()
_silent_socket = None


def _silent_url():
    """URL of a loopback socket that accepts connections and never answers.

    The kernel completes the TCP handshake for connections queued in the listen backlog, so a
    client connects and then waits forever for a response: a stalled service, in-process.
    """
    global _silent_socket
    with _silent_lock:
        if _silent_socket is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            _silent_socket = s
        return "http://127.0.0.1:%d/" % _silent_socket.getsockname()[1]


@_bad_param
def external(request):
    """Call an external HTTP service with no timeout (the mistake: urlopen waits forever)."""
    url = request.GET.get("url") or settings.EXTERNAL_SERVICE_URL or _silent_url()
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise BadParam(f"url must be http:// or https://, got {url!r}")
    with urllib.request.urlopen(url) as response:  # no timeout=, on purpose
        body = response.read(64 * 1024)
    return JsonResponse({"url": url, "status": response.status, "bytes": len(body)})


@_bad_param
def report(request):
    """A CPU-bound "report": n rows of pseudo-random sales summed per region in pure Python."""
    n = _number(request, "n", 10_000_000, int, 1, 500_000_000)
    started = time.monotonic()
    totals = [0] * 7
    x = 12345
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        totals[x % 7] += x % 1000
    return JsonResponse({"rows": n, "totals": totals, "seconds": round(time.monotonic() - started, 3)})


def health(request):
    """Liveness plus what Django believes about the request (scheme and host come from nginx)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except DatabaseError as e:
        database = str(e).strip() or type(e).__name__
    return JsonResponse(
        {
            "status": "ok" if database == "ok" else "degraded",
            "database": database,
            "scheme": request.scheme,
            "host": request.get_host(),
            "absolute_uri": request.build_absolute_uri(),
            "remote_addr": request.META.get("REMOTE_ADDR"),
            "forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
            "worker": os.getpid(),
        },
        status=200 if database == "ok" else 503,
    )
