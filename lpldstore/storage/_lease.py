"""One writer per part of a store: leases on blocks, taken atomically, taken over from the dead.

A writer's part (``part=(rank, world)``) owns the blocks ``b`` with ``b % world == rank``. Before
writing anything, :class:`Leases` takes one lease file per owned block, ``.leases/block-<b>.json``
inside the store, each created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS
v3 and later). A second writer whose part shares a block with a live writer's is refused with an
error naming the holder (owner, host, pid, part and start time), before it writes a byte; one
whose part is disjoint takes its own leases and runs alongside. Leases are released when the
writer closes.

The takeover rule, for a lease that a killed writer left behind:

- **same host** (the lease's host name and boot id equal this machine's): the lease is stale when
  its process is gone (no such pid, a zombie, or a pid reused by a process that started later);
- **another host**: the lease is stale when it was not renewed for :data:`STALE_AFTER_S` seconds.
  Writers renew their leases when they commit, at most every :data:`RENEW_EVERY_S` seconds, so
  a live writer that commits at least every ``STALE_AFTER_S`` seconds is never taken over.

A stale lease is moved aside with ``rename`` (atomic: of two writers taking it over, one
succeeds) and the block is leased again with ``O_EXCL``. A writer that lost a lease anyway (its
host was unreachable longer than the timeout) finds out at its next commit: every commit first
checks that each of its block's leases still holds its token, and refuses otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lpldstore.errors import StoreLockedError

__all__ = ["LEASE_DIR", "RENEW_EVERY_S", "STALE_AFTER_S", "Holder", "Leases"]

LEASE_DIR = ".leases"
STALE_AFTER_S = 600.0
RENEW_EVERY_S = 60.0


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rindex(")") + 2] == "Z":
            return False  # killed, not yet reaped
    except (OSError, ValueError, IndexError):
        pass
    now_started = _process_start(pid)
    return started is None or now_started is None or now_started == started


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease (the JSON of a lease file)."""

    token: str
    owner: str
    host: str
    boot_id: str | None
    pid: int
    pid_started: int | None
    part: tuple[int, int]
    since_utc: str
    renewed: float

    @classmethod
    def mine(cls, part: tuple[int, int]) -> Holder:
        try:
            owner = getpass.getuser()
        except (KeyError, OSError):
            owner = str(os.getuid())
        pid = os.getpid()
        return cls(
            token=uuid.uuid4().hex,
            owner=owner,
            host=socket.gethostname(),
            boot_id=_boot_id(),
            pid=pid,
            pid_started=_process_start(pid),
            part=part,
            since_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            renewed=time.time(),
        )

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The holder in a lease file, or None if it is not one (a torn or foreign file)."""
        try:
            doc = json.loads(data)
            return cls(
                token=str(doc["token"]),
                owner=str(doc["owner"]),
                host=str(doc["host"]),
                boot_id=None if doc["boot_id"] is None else str(doc["boot_id"]),
                pid=int(doc["pid"]),
                pid_started=None if doc["pid_started"] is None else int(doc["pid_started"]),
                part=(int(doc["part"][0]), int(doc["part"][1])),
                since_utc=str(doc["since_utc"]),
                renewed=float(doc["renewed"]),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (user {self.owner}), part {self.part}, since {self.since_utc}"

    def stale(self) -> bool:
        """Whether this lease's writer is gone (the module docstring's takeover rule)."""
        here = socket.gethostname() == self.host and (
            self.boot_id is None or _boot_id() is None or self.boot_id == _boot_id()
        )
        if socket.gethostname() == self.host and not here:
            return True  # this host rebooted since: every process of the lease's time is gone
        if here:
            return not _alive(self.pid, self.pid_started)
        return time.time() - self.renewed > STALE_AFTER_S


def _young(path: Path) -> bool:
    """Whether a lease file was written in the last few seconds (an unparseable one may be mid-write)."""
    try:
        return time.time() - os.stat(path, follow_symlinks=False).st_mtime < 5.0
    except FileNotFoundError:
        return False


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 16)


class Leases:
    """The leases of one writer on the blocks of its part (see the module docstring)."""

    def __init__(self, store: Path, part: tuple[int, int], where: str) -> None:
        self.dir = store / LEASE_DIR
        self.part = part
        self.where = where
        self.me = Holder.mine(part)
        self.held: list[int] = []
        self._renewed = time.monotonic()

    def _path(self, block: int) -> Path:
        return self.dir / f"block-{block}.json"

    def acquire(self, blocks: Iterable[int]) -> None:
        """Lease every block (ascending); on any refusal release what was taken and raise."""
        try:
            self.dir.mkdir(exist_ok=True)
            for block in sorted(blocks):
                self._take(block)
                self.held.append(block)
        except BaseException:
            self.release()
            raise

    def _take(self, block: int) -> None:
        path = self._path(block)
        for _ in range(8):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.me.to_json())
                    f.flush()
                    os.fsync(f.fileno())
                return
            data = _read(path)
            if data is None:
                continue  # released meanwhile: try again
            holder = Holder.parse(data)
            if holder is None and _young(path):
                raise StoreLockedError(
                    f"{self.where}: block {block} is being leased by another writer right now ({path}). Give this "
                    "writer a disjoint part."
                )
            if holder is not None and not holder.stale():
                raise StoreLockedError(
                    f"{self.where}: block {block}, which part {self.part} writes, is leased by another writer: "
                    f"{holder.describe()}. Two writers must not fill the same entries; wait for it to finish or "
                    "give this writer a disjoint part. A lease left by a writer that died is taken over by itself "
                    f"(same host: once its process is gone; another host: after {STALE_AFTER_S:.0f} s without "
                    f"renewal); its file is {path}."
                )
            # Stale (or unreadable): move it aside atomically; only one taker succeeds.
            aside = path.with_name(f"{path.name}.stale-{self.me.token}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = _read(aside)
            if moved != data:
                # Between our read and the rename another writer took the block over: put its
                # fresh lease back (link fails if a third one got in first) and stop.
                with contextlib.suppress(OSError):
                    os.link(aside, path)
                aside.unlink(missing_ok=True)
                fresh = Holder.parse(moved or b"")
                raise StoreLockedError(
                    f"{self.where}: block {block} was just taken over by another writer"
                    f"{': ' + fresh.describe() if fresh else ''}. Give this writer a disjoint part."
                )
            aside.unlink(missing_ok=True)
        raise StoreLockedError(f"{self.where}: could not lease block {block}: it keeps changing hands.")

    def check(self, block: int) -> None:
        """Refuse to commit into ``block`` unless this writer still holds its lease."""
        data = _read(self._path(block))
        holder = Holder.parse(data) if data is not None else None
        if holder is None or holder.token != self.me.token:
            who = holder.describe() if holder is not None else "nobody (the lease file is gone)"
            raise StoreLockedError(
                f"{self.where}: this writer (part {self.part}) no longer holds the lease of block {block}; it is "
                f"held by {who}. Nothing of the block was committed. Another writer took it over, which happens "
                f"when a writer does not commit for {STALE_AFTER_S:.0f} s; reopen the store to continue."
            )

    def renew(self) -> None:
        """Refresh the time in every held lease, at most every :data:`RENEW_EVERY_S` seconds."""
        if time.monotonic() - self._renewed < RENEW_EVERY_S:
            return
        self._renewed = time.monotonic()
        self.me = dataclasses.replace(self.me, renewed=time.time())
        for block in self.held:
            self.check(block)
            path = self._path(block)
            tmp = path.with_name(f"{path.name}.renew-{self.me.token}")
            tmp.write_bytes(self.me.to_json())
            os.replace(tmp, path)

    def release(self) -> None:
        """Remove every lease this writer holds (leases taken over by others are left alone)."""
        for block in self.held:
            path = self._path(block)
            data = _read(path)
            holder = Holder.parse(data) if data is not None else None
            if holder is not None and holder.token == self.me.token:
                path.unlink(missing_ok=True)
        self.held = []
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when no other writer holds a lease

    @staticmethod
    def holders(store: Path) -> dict[int, Any]:
        """Every lease file of ``store`` by block (for reports)."""
        out: dict[int, Any] = {}
        folder = store / LEASE_DIR
        if not folder.is_dir():
            return out
        for path in folder.iterdir():
            if path.name.startswith("block-") and path.name.endswith(".json"):
                data = _read(path)
                out[int(path.name[6:-5])] = Holder.parse(data) if data is not None else None
        return out
