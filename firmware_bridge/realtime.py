"""Keep numerical libraries from running thread pools on the real-time paths.

OpenBLAS starts worker threads for some calls and leaves them spinning afterwards; on a small
machine (2 cores) they take the CPU from the control loop and from the simulator, and a 9 x 9
matrix exponential was measured taking about 5 ms instead of 9 us. The loop, the simulator and
the command line therefore run numerics single-threaded (threadpoolctl, which sets the limit
in every BLAS library the process has loaded).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from threadpoolctl import threadpool_limits


def single_threaded_numerics() -> AbstractContextManager[Any]:
    """Context manager: BLAS/LAPACK use one thread inside it."""
    limits: AbstractContextManager[Any] = threadpool_limits(limits=1, user_api="blas")
    return limits
