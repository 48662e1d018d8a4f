"""Memory as the runs record it: the process's peak resident set so far (the number users compare with their RAM),
marked at stage ends so a report says which stage set the peak, and handing freed heap back to the OS."""

from __future__ import annotations

import ctypes
import resource
import sys


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (10^9 bytes; ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak * (1 if sys.platform == "darwin" else 1024) / 1e9, 2)


def release() -> None:
    """Return freed heap memory to the OS (glibc's malloc_trim): torch on CPU frees into glibc, which otherwise keeps
    the pages, so the next stage's peak would stand on the last one's garbage. A no-op off glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Peaks(dict):
    """{stage: peak RSS in GB at the stage's end}: the first stage whose value jumps is the one that set the peak."""

    def mark(self, stage: str) -> None:
        self[stage] = peak_rss_gb()
        release()
