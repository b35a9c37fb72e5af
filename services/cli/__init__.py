"""The ``steward`` command line: ``steward run`` (the whole stack on embedded defaults) and ``steward doctor``.

One module per role: :mod:`.settings` (flags and ``STEWARD_RUN__*`` variables), :mod:`.home` (what lives
under ``.steward/``), :mod:`.ports`, :mod:`.devca`, :mod:`.openbao`, :mod:`.catalog` (the service table),
:mod:`.supervisor` (child processes), :mod:`.stack` (wiring it together), :mod:`.state` (what a running
stack tells other commands), :mod:`.doctor` and :mod:`.main` (click).
"""
