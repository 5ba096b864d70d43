"""How many CPU threads torch should use: not more than the cores other processes leave free. PyTorch's OpenMP
threads wait for each other at every operation; when another process holds a core, a thread that waits for one
without a core stalls all of them, and a run can take several times as long as with one thread fewer."""
from __future__ import annotations

import os
import time

ENVIRONMENT = "RESNET_LRP_THREADS"  # a fixed thread count, when set


def busy_cores(interval: float = 0.1) -> float | None:
    """How many cores other processes keep busy now (niced work, which yields, not counted), sampled from
    ``/proc/stat`` over ``interval`` seconds; None where there is no ``/proc/stat``."""
    def sample():
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
        user, nice, system, idle, iowait = fields[:5]
        rest = sum(fields[5:8])  # irq, softirq, steal
        return user + system + rest, user + nice + system + idle + iowait + rest

    try:
        busy_before, total_before = sample()
        time.sleep(interval)
        busy_after, total_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total_after <= total_before:
        return None
    return (busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1)


def choose_threads(small: bool = False) -> int:
    """The thread count for this process: ``RESNET_LRP_THREADS`` or ``OMP_NUM_THREADS`` when set; one for a small
    workload (a small model on small inputs gains nothing from a second thread and loses most to waiting); else the
    cores others leave free, at least one."""
    for name in (ENVIRONMENT, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if small or cores == 1:
        return 1
    busy = busy_cores()
    if busy is None:
        return cores
    return max(1, min(cores, round(cores - busy)))
