"""A throwaway PostgreSQL cluster with SCRAM logins, for the gateway tests and the benchmark.

Adapted from tests/postgres/pg_cluster.py: ``initdb`` from /usr/lib/postgresql/*/bin, run as the
``postgres`` system user in a folder under /tmp; ``pg_hba.conf`` trusts only the bootstrap
superuser and makes every other login present a SCRAM-SHA-256 password (the machine's own
PostgreSQL trusts everyone, so it cannot show that the gateway's upstream login works).
No statement logging: the benchmark measures the relay, not the server's log.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"

HBA = """\
local   all   {superuser}                   trust
host    all   {superuser}   127.0.0.1/32    trust
local   all   all                           scram-sha-256
host    all   all           127.0.0.1/32    scram-sha-256
"""

CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
"""


def bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(command: str) -> subprocess.CompletedProcess:
    argv = ["su", "postgres", "-s", "/bin/sh", "-c", command] if os.geteuid() == 0 else ["/bin/sh", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@dataclass
class Cluster:
    root: Path
    data: Path
    port: int
    bin_dir: Path

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        as_postgres(f"{shlex.quote(str(self.bin_dir / 'pg_ctl'))} -D {shlex.quote(str(self.data))} -m immediate -w stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(extra_conf: str = "") -> Cluster:
    bdir = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="nhb-gwtest-"))
    os.chmod(root, 0o777)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    result = as_postgres(f"{shlex.quote(str(bdir / 'initdb'))} -D {shlex.quote(str(data))} -U {SUPERUSER}"
                         " --auth=trust --encoding=UTF8 --no-sync --no-instructions")
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed: {result.stderr}")
    port = free_port()
    conf = CONF.format(port=port, socket_dir=root) + extra_conf
    as_postgres(f"cat >> {shlex.quote(str(data / 'postgresql.conf'))} <<'EOF'\n{conf}\nEOF")
    as_postgres(f"cat > {shlex.quote(str(data / 'pg_hba.conf'))} <<'EOF'\n{HBA.format(superuser=SUPERUSER)}\nEOF")
    result = as_postgres(f"{shlex.quote(str(bdir / 'pg_ctl'))} -D {shlex.quote(str(data))}"
                         f" -l {shlex.quote(str(root / 'startup.log'))} -w -t 60 start")
    if result.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {result.stderr}")
    cluster = Cluster(root=root, data=data, port=port, bin_dir=bdir)
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(cluster.admin_dsn, connect_timeout=2):
                return cluster
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                cluster.stop()
                raise
            time.sleep(0.2)
