"""The system suite's harness: the whole stack started by ``steward run``, load, faults, accounting, fuzz, report."""
