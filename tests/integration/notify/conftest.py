"""Fixtures of notify's core tests (see support.py)."""

from tests.integration.notify.support import notify_factory, smtp_pki, smtp_sink

__all__ = ["notify_factory", "smtp_pki", "smtp_sink"]
