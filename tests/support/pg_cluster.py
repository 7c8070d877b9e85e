"""Throw-away PostgreSQL servers from Debian's binaries: a primary and a streaming replica.

``PgCluster`` makes, in a temporary directory of its own, a primary on a free 127.0.0.1 port
(``initdb``; WAL for replication, trust authentication on the loopback, its socket in the
directory) and, when asked, a replica of it (``pg_basebackup -R``: it streams from the primary
and is promoted with ``pg_ctl promote``), optionally a synchronous standby. Servers stop with
``pg_ctl stop`` (smart, fast or immediate) or die with SIGKILL like a crashed host.

PostgreSQL refuses to run as root: as root the binaries run as the ``postgres`` user
(``runuser``) and the directory is handed to that user. Every wait is bounded
(:func:`tests.support.process.wait_for`); :meth:`PgCluster.close` (called by
:func:`running_pg_cluster` whatever happens) kills what still runs and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tests.support.process import free_port, wait_for

SyncMode = Literal["on", "remote_apply", "remote_write"]
StopMode = Literal["smart", "fast", "immediate"]
USER = "postgres"  # the database superuser (trust authentication)


def server_binaries() -> Path:
    """The directory with initdb, pg_ctl, pg_basebackup and postgres (the newest installed),
    or a RuntimeError saying which Debian package brings them."""
    override = os.environ.get("OPENMFA_TEST_PG_BIN")  # only these, when set
    candidates = [Path(override)] if override else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir() and not override:
        versions = sorted(
            (p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [p / "bin" for p in reversed(versions)]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "pg_basebackup")):
            return candidate
    where = override or "/usr/lib/postgresql/*/bin"
    raise RuntimeError(
        f"no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) in {where}: "
        "install the Debian package `postgresql` (.ci/install-tools does)"
    )


def _as_server_user() -> list[str]:
    """The command prefix that runs a server binary as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", USER, "--"]


class PgServer:
    """One PostgreSQL server (data directory, port, log) in a :class:`PgCluster`."""

    def __init__(self, bin_dir: Path, data: Path, port: int, sockets: Path) -> None:
        self.bin_dir = bin_dir
        self.data = data
        self.port = port
        self.sockets = sockets
        self.log = data.parent / f"{data.name}.log"

    def run(self, program: str, *args: str, timeout: float = 60) -> str:
        """Run a server binary as the server's user; its output, or an error with it."""
        command = [*_as_server_user(), str(self.bin_dir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {done.returncode}: "
                f"{done.stderr.strip()} {self.log_tail()}"
            )
        return done.stdout

    def sql(self, statement: str, database: str = "postgres", timeout: float = 30) -> str:
        """One statement through psql over TCP; its unaligned output, stripped."""
        return self.run(
            "psql",
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            USER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statement,
            timeout=timeout,
        ).strip()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log))

    def stop(self, mode: StopMode = "fast") -> None:
        """``pg_ctl stop -m mode``, waiting until the server is gone."""
        self.run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    def pid(self) -> int | None:
        """The postmaster's process id while it runs, else None."""
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    @property
    def running(self) -> bool:
        """Whether the postmaster runs."""
        return self.pid() is not None

    def kill(self) -> None:
        """SIGKILL the postmaster and every process of the server, as a crashed host: no
        shutdown checkpoint, connections cut without a word."""
        pid = self.pid()
        if pid is None:
            return
        children = _children(pid)
        for victim in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: not any(_alive(p) for p in (pid, *children)),
            10,
            f"the processes of the server on port {self.port} to die",
        )
        # A stale postmaster.pid would make the next start wait for nothing.
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def in_recovery(self) -> bool:
        """Whether the server is a standby (``pg_is_in_recovery()``)."""
        return self.sql("SELECT pg_is_in_recovery()") == "t"

    def promote(self, timeout: float = 30) -> None:
        """``pg_ctl promote``, then wait until the server takes writes."""
        self.run("pg_ctl", "promote", "-w", "-t", str(int(timeout)), "-D", str(self.data))
        wait_for(lambda: not self.in_recovery(), timeout, f"port {self.port} to leave recovery")

    def configure(self, lines: dict[str, str]) -> None:
        """Append settings to postgresql.conf (later lines win); a running server reloads."""
        text = "".join(f"{key} = {value}\n" for key, value in lines.items())
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(text)
        if self.running:
            self.run("pg_ctl", "reload", "-D", str(self.data))

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (an exited child of ours) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


class PgCluster:
    """A primary and, after :meth:`add_replica`, a streaming replica, in ``directory``."""

    def __init__(self, directory: Path, bin_dir: Path | None = None) -> None:
        self.directory = directory
        self.bin_dir = bin_dir or server_binaries()
        self.sockets = directory / "sockets"
        self.primary = PgServer(self.bin_dir, directory / "primary", free_port(), self.sockets)
        self.replica: PgServer | None = None

    def start_primary(self) -> PgServer:
        """initdb and start the primary (replication allowed from 127.0.0.1)."""
        self.sockets.mkdir(exist_ok=True)
        _give_to_server_user(self.directory)
        primary = self.primary
        primary.run(
            "initdb",
            "-D",
            str(primary.data),
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        (primary.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "local replication all trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        primary.configure(
            {
                "listen_addresses": "'127.0.0.1'",
                "port": str(primary.port),
                "unix_socket_directories": f"'{self.sockets}'",
                "wal_level": "replica",
                "max_wal_senders": "5",
                "hot_standby": "on",
                "max_connections": "200",
                "shared_buffers": "16MB",
                # Survives a killed server (the OS keeps the writes), not a lost machine: the
                # speed a test server wants.
                "fsync": "off",
                "cluster_name": "'primary'",
            }
        )
        primary.start()
        return primary

    def add_replica(self, synchronous: SyncMode | None = None) -> PgServer:
        """A streaming replica (``pg_basebackup -R``) on its own port, started; with
        ``synchronous`` it is the primary's synchronous standby and the primary's
        ``synchronous_commit`` is set to that level."""
        replica = PgServer(self.bin_dir, self.directory / "replica", free_port(), self.sockets)
        replica.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            USER,
            "-D",
            str(replica.data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
            timeout=120,
        )
        # cluster_name is the walreceiver's application_name: synchronous_standby_names uses it.
        replica.configure({"port": str(replica.port), "cluster_name": "'replica'"})
        replica.start()
        self.replica = replica
        wait_for(
            lambda: self.primary.sql("SELECT count(*) FROM pg_stat_replication") == "1",
            30,
            "the replica to stream from the primary",
            every=0.1,
            detail=replica.log_tail,
        )
        if synchronous is not None:
            self.primary.configure(
                {"synchronous_standby_names": "'replica'", "synchronous_commit": synchronous}
            )
            wait_for(
                lambda: self.primary.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
                30,
                "the replica to become the synchronous standby",
                every=0.1,
            )
        return replica

    def detach_replica(self) -> None:
        """Stop the replica's streaming (``primary_conninfo`` emptied): it keeps what it has
        and falls behind, as a replica on a lagging or broken link does."""
        replica = self.replica
        assert replica is not None, "add_replica first"
        # pg_basebackup -R wrote primary_conninfo to postgresql.auto.conf, which wins over
        # postgresql.conf: change it there.
        replica.sql("ALTER SYSTEM SET primary_conninfo = ''")
        replica.sql("SELECT pg_reload_conf()")
        wait_for(
            lambda: self.primary.sql("SELECT count(*) FROM pg_stat_replication") == "0",
            30,
            "the replica to stop streaming",
            every=0.1,
        )

    def fence_primary(self) -> None:
        """Make the primary refuse writes without stopping it (``default_transaction_read_only``,
        as failover tools fence an old primary): open sessions turn read-only too."""
        self.primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        self.primary.sql("SELECT pg_reload_conf()")

    def create_database(self, name: str) -> None:
        """A database on the primary (a replica receives it by streaming)."""
        self.primary.sql(f'CREATE DATABASE "{name}"')

    def url(self, database: str, server: PgServer | None = None) -> str:
        """``postgresql+asyncpg://postgres@127.0.0.1:PORT/database`` of one server."""
        port = (server or self.primary).port
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{port}/{database}"

    def multi_host_url(self, database: str) -> str:
        """libpq's form over primary then replica, ``target_session_attrs=read-write``."""
        ports = [self.primary.port] + ([self.replica.port] if self.replica else [])
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        return f"postgresql://{USER}@{hosts}/{database}?target_session_attrs=read-write"

    def close(self) -> None:
        """Stop every server (immediately: nothing here needs keeping), remove the directory."""
        for server in (self.replica, self.primary):
            if server is None or not server.running:
                continue
            try:
                server.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                server.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _give_to_server_user(directory: Path) -> None:
    if os.geteuid() != 0:
        return
    account = pwd.getpwnam(USER)
    for path in (directory, *directory.rglob("*")):
        os.chown(path, account.pw_uid, account.pw_gid)


@contextlib.contextmanager
def running_pg_cluster(
    replica: bool = True, synchronous: SyncMode | None = None
) -> Iterator[PgCluster]:
    """A started :class:`PgCluster` (primary, and replica unless ``replica`` is False) in a
    fresh temporary directory, stopped and removed afterwards whatever happens."""
    bin_dir = server_binaries()  # before the directory: no binaries, nothing left behind
    # Not under pytest's tmp_path: its parents are root's (mode 0700), closed to `postgres`.
    directory = Path(tempfile.mkdtemp(prefix="openmfa-pg-"))
    cluster = PgCluster(directory, bin_dir)
    try:
        cluster.start_primary()
        if replica:
            cluster.add_replica(synchronous)
        yield cluster
    finally:
        cluster.close()
