"""The embedded dev stack behind ``steward run``: everything a laptop needs and a production image must not ship.

One module per role: :mod:`.settings` (flags and ``STEWARD_RUN__*`` variables), :mod:`.ports`, :mod:`.devca`
(dev CA and certificates), :mod:`.devidp` (dev-only operator tokens), :mod:`.devsecrets`, :mod:`.openbao`
(bootstrap and unseal), :mod:`.catalog` (the service table), :mod:`.supervisor` (child processes),
:mod:`.stack` (wiring it together), :mod:`.demo` (the demo tenant) and :mod:`.doctor` (checking it).
It builds on :mod:`services.cli` (home folder, stack state, gateway client), never the other way round
at import time: the operator CLI loads this package only inside the commands that need it.
"""
