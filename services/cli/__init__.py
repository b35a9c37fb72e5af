"""The ``steward`` command line: ``steward run`` (the whole stack on embedded defaults), ``steward doctor``
and the operator commands (tenants, API keys, tenant keys, audit, support access) through the gateway.

One module per role: :mod:`.settings` (flags and ``STEWARD_RUN__*`` variables), :mod:`.home` (what lives
under ``.steward/``), :mod:`.ports`, :mod:`.devca`, :mod:`.devidp` (dev-only operator tokens),
:mod:`.openbao`, :mod:`.catalog` (the service table), :mod:`.supervisor` (child processes), :mod:`.stack`
(wiring it together), :mod:`.demo` (the demo tenant), :mod:`.state` (what a running stack tells other
commands), :mod:`.doctor`, :mod:`.client` (calling the gateway), :mod:`.render` (output),
:mod:`.operator_commands` and :mod:`.main` (click).
"""
