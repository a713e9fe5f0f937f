# ferricorn configuration for a Django project behind nginx (deploy/nginx.conf), started by
# deploy/ferricorn.service as `ferricorn -c /etc/ferricorn/ferricorn.conf.py`. A gunicorn.conf.py with
# the same names works unchanged. docs/deployment.md explains every value.
#
# examples/django_project/stack renders this file into $STACK_DIR/ferricorn.conf.py: it replaces the
# value of each `name = value` line it knows (bind, workers, timeouts, log files, ...) and appends the
# stack's own settings, so keep one setting per line.

# The Django project (manage.py and the demo package live here) and its WSGI callable.
chdir = "/srv/app"
wsgi_app = "demo.wsgi:application"

# Behind nginx on the same host. Under socket activation (deploy/ferricorn.socket) the listening socket
# comes from systemd and this is ignored; keep both on the same address.
bind = "127.0.0.1:8000"

# Two processes with two threads each: a request waiting on the database or on another service holds
# one thread, not the whole worker. Size workers to the CPU cores, threads to the I/O waits.
worker_class = "gthread"
workers = 2
threads = 2

# A request may run 30 s in Python. ferricorn then answers it 504, logs WORKER TIMEOUT with the
# request and its Python stack, and replaces the worker. nginx waits longer (proxy_read_timeout 60s in
# deploy/nginx.conf) so that this happens first and the client gets ferricorn's answer.
timeout = 30
# On HUP, TERM or a recycle, a worker's requests get this long to finish.
graceful_timeout = 30
# Replace each worker after about 1000 requests (plus up to 100, so they do not all restart at once):
# a slow leak in the app cannot grow without bound.
max_requests = 1000
max_requests_jitter = 100

# nginx is the only peer allowed to set X-Forwarded-Proto & co.
forwarded_allow_ips = "127.0.0.1"

# Under systemd both logs go to the journal (journalctl -u ferricorn).
errorlog = "-"
accesslog = "-"
loglevel = "info"
# Request duration in seconds at the end of each access line; the client address comes from nginx.
access_log_format = '%({x-forwarded-for}i)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)ss'
# print() and uncaught tracebacks from Django go to the error log too.
capture_output = True

# For `ferricornctl -s /run/ferricorn/ferricorn.ctl show workers` (RuntimeDirectory= of the unit).
control_socket = "/run/ferricorn/ferricorn.ctl"
pidfile = "/run/ferricorn/ferricorn.pid"
proc_name = "django-demo"
