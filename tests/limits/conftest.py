"""The limits tests use the real HTTP server of the API tests (both backends)."""

from tests.api.conftest import serve_app, service

__all__ = ["serve_app", "service"]
