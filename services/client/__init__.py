"""Python client for internal apps: :class:`StewardClient` (grpc.aio, TLS, API key, deadlines, idempotent
writes, retries of what is retryable only). See the README's "Python client" section."""

from services.client.client import StewardClient
from services.client.retry import RetryPolicy, is_retryable, retry_after_s

__all__ = ["RetryPolicy", "StewardClient", "is_retryable", "retry_after_s"]
