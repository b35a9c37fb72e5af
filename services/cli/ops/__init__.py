"""The operator commands, one module per noun: :mod:`.tenant`, :mod:`.apikey`, :mod:`.keys`, :mod:`.audit`,
:mod:`.support`, :mod:`.whoami`, :mod:`.db` (schema migrations) and :mod:`.local` (``demo`` and ``token mint``,
local stack only); :mod:`.invocation` holds what they share (common options, one-line failures).
"""
