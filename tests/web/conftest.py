"""The dashboard's HTTP tests use the real server of the API tests (both backends)."""

from tests.api.conftest import serve_app, service

__all__ = ["serve_app", "service"]
