"""The ``steward`` command line: ``steward run`` (the whole stack on embedded defaults), ``steward doctor``,
``steward db upgrade`` and the operator commands (tenants, API keys, tenant keys, audit, support access)
through the gateway.

One module per role: :mod:`.home` (what lives under ``.steward/``), :mod:`.state` (what a running stack
tells other commands), :mod:`.client` (calling the gateway: target, errors and exit codes), :mod:`.render`
(output), :mod:`.ops` (the operator commands, one module per noun) and :mod:`.main` (click). The embedded
dev stack itself (launcher, supervisor, dev CA, dev IdP, OpenBao bootstrap) is :mod:`services.devstack`,
which this package imports only inside ``steward run``, ``doctor``, ``demo`` and ``token mint``.
"""
