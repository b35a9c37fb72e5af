"""``python -m services.gateway.main`` with an API-key cache that does not expire during a test.

The two-process revocation test runs its replicas through this module so that a replica refusing a revoked
key can only have been told by the revocation event (see ``support.with_long_key_cache``).
"""

from __future__ import annotations

from services.gateway import main
from services.gateway.apikeys import ApiKeyAuthenticator
from tests.integration.gateway.support import with_long_key_cache

if __name__ == "__main__":
    ApiKeyAuthenticator.__init__ = with_long_key_cache(ApiKeyAuthenticator.__init__)  # type: ignore[method-assign]
    main.main()
