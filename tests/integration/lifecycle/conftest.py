"""Fixtures of the lifecycle tests: notify's SMTP sink and factory (tests/integration/notify/support.py)."""

from tests.integration.notify.support import notify_factory, smtp_pki, smtp_sink

__all__ = ["notify_factory", "smtp_pki", "smtp_sink"]
