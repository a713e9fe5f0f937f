"""ferricorn: a gunicorn-compatible WSGI server whose core is written in Rust.

This package is only a shim: everything after ``argv`` (configuration, sockets,
the master process, HTTP and the WSGI bridge) lives in ``ferricorn._core``.
"""

from ferricorn._core import __version__

__all__ = ["__version__"]
