"""What the observer reads from /proc: CPU seconds of process trees over time, and peak RSS.

CPU of a tree = the sum, over every live process in it, of utime + stime + cutime + cstime. A child that
exits is reaped by its parent, whose cutime/cstime then carry its time, so the total never drops when
PostgreSQL backends or nginx workers come and go. A sampler thread records each tree's total every
`interval` seconds, and `cpu_between(group, t0, t1)` interpolates the CPU spent in a wall-clock window
(the window is known only afterwards, from the receiver's log).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime + cutime + cstime in ticks) of one process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; the fields we want follow the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14, so fields[11..14] are utime, stime, cutime, cstime.
    return int(fields[1]), int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (all of its threads' children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found += [int(p) for p in text.split()]
    return found


def tree(pid: int) -> list[int]:
    """`pid` and every live descendant."""
    out = [pid]
    i = 0
    while i < len(out):
        out += _children(out[i])
        i += 1
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by `pid`, its live descendants and every descendant reaped."""
    ticks = 0
    for p in tree(pid):
        st = _stat(p)
        if st is not None:
            ticks += st[1]
    return ticks / CLOCK_TICKS


def runqueue_wait(pid: int) -> float:
    """Seconds the threads of `pid` have spent ready to run but waiting for a CPU (the second field of each
    /proc/<pid>/task/<tid>/schedstat, in nanoseconds); 0 when the process is gone or the kernel keeps no
    schedstat."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def self_cpu() -> float:
    """CPU seconds of this process (the harness), threads included."""
    t = os.times()
    return t.user + t.system


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all CPUs; /proc/stat, idle and iowait left out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """A thread sampling named CPU counters every `interval` seconds; groups can be added and removed live."""

    def __init__(self, interval: float = 0.1) -> None:
        self._interval = interval
        self._groups: dict[str, Callable[[], float]] = {}
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def watch(self, name: str, read: Callable[[], float]) -> None:
        """Sample `read()` (cumulative CPU seconds) under `name`, starting with a sample now."""
        with self._lock:
            self._groups[name] = read
            self._series[name] = ([], [])
        self._sample_one(name, read)

    def watch_tree(self, name: str, pid: int) -> None:
        self.watch(name, lambda: tree_cpu(pid))

    def unwatch(self, name: str) -> None:
        """Take a last sample and stop sampling `name` (its series is kept for cpu_between)."""
        with self._lock:
            read = self._groups.pop(name, None)
        if read is not None:
            self._sample_one(name, read)

    def sample_now(self) -> None:
        with self._lock:
            groups = list(self._groups.items())
        for name, read in groups:
            self._sample_one(name, read)

    def _sample_one(self, name: str, read: Callable[[], float]) -> None:
        value = read()
        now = time.time()
        with self._lock:
            times, values = self._series[name]
            if values and value < values[-1]:  # a tree whose root is gone reads 0: keep the last total
                value = values[-1]
            times.append(now)
            values.append(value)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample_now()

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        """CPU seconds `name` used between wall-clock times t0 and t1 (linear between samples)."""
        with self._lock:
            times, values = (list(s) for s in self._series.get(name, ([], [])))
        if len(times) < 2:
            return None
        return max(0.0, _interp(times, values, t1) - _interp(times, values, t0))


def _interp(times: list[float], values: list[float], t: float) -> float:
    if t <= times[0]:
        return values[0]
    if t >= times[-1]:
        return values[-1]
    i = bisect.bisect_right(times, t)
    t_a, t_b = times[i - 1], times[i]
    v_a, v_b = values[i - 1], values[i]
    return v_a + (v_b - v_a) * (t - t_a) / (t_b - t_a) if t_b > t_a else v_b
