"""A CPU quota for chosen processes: a cgroup v1 `cpu` group, so a benchmark or a test can
give instances a fraction of a core and overload them on purpose (needs root).

    with CpuQuota(0.5) as quota:   # half a core, shared by every process added
        quota.add(pid)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from types import TracebackType

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


class CpuQuota:
    """A cgroup of our own with cfs_quota_us = cores * period; removed on exit."""

    def __init__(self, cores: float, *, root: Path = CGROUP_CPU) -> None:
        if cores <= 0:
            raise ValueError("the quota must be a positive number of cores")
        self.cores = cores
        self.root = root
        self.path = root / f"clickky-{os.getpid()}-{secrets.token_hex(3)}"

    def __enter__(self) -> CpuQuota:
        if not (self.root / "cgroup.procs").exists() or not os.access(self.root, os.W_OK):
            raise RuntimeError(
                f"a CPU quota needs cgroup v1's cpu controller at {self.root}, writable (root)"
            )
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(int(self.cores * PERIOD_US)))
        return self

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """How long the group's processes were held back by the quota so far."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "throttled_time":
                return int(value) / 1e9
        return 0.0

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # A cgroup can be removed only when empty: hand what is left back to the root.
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (self.root / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()
