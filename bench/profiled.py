"""Run a service module under cProfile on every thread (event loop, database writer, thread pool), for benchmarks.

``python -m bench.profiled services.dsr.main OUT.prof`` runs the module as ``__main__``; when it ends (SIGTERM ends
a service with status 0) the threads' profiles are merged into ``OUT.prof`` and the top functions by own time
written to ``OUT.prof.txt``. py-spy would see native frames too, but it is not in the virtualenv.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import runpy
import sys
import threading
from typing import Any

TOP = 30


def main() -> None:
    """Profile ``sys.argv[1]`` (a module) and write ``sys.argv[2]``."""
    module, out = sys.argv[1], sys.argv[2]
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(*_args: Any) -> None:
        # Called on a new thread's first profiling event: from then on that thread has its own profiler.
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()

    threading.setprofile(start_in_thread)
    main_profile = cProfile.Profile()
    profiles.append(main_profile)
    sys.argv = [module]
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        with lock:
            stats = pstats.Stats(profiles[0])
            for profile in profiles[1:]:
                try:
                    stats.add(profile)
                except Exception:  # a thread that never recorded anything
                    continue
        stats.dump_stats(out)
        text = io.StringIO()
        pstats.Stats(out, stream=text).sort_stats("tottime").print_stats(TOP)
        with open(f"{out}.txt", "w") as handle:
            handle.write(text.getvalue())


if __name__ == "__main__":
    main()
