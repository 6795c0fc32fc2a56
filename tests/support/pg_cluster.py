"""A throwaway PostgreSQL cluster for the tests (real server, real authentication).

The machine's own PostgreSQL trusts every local connection, so passwords and ``VALID UNTIL``
are never checked there. This cluster is made with ``initdb`` from /usr/lib/postgresql/*/bin,
run as the ``postgres`` system user in a folder under /tmp, with ``pg_hba.conf`` saying
``scram-sha-256`` for every TCP login except the bootstrap superuser, and the logging
collector writing ``stderr``, ``jsonlog`` and ``csvlog`` with every statement and connection.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

SUPERUSER = "postgres"
#: log_line_prefix of the cluster's stderr log (what `broker ingest --prefix` is told).
LOG_PREFIX = "%m [%p] %q%u@%d %c %l "

HBA = """\
# throwaway test cluster: the bootstrap superuser is trusted on loopback, everyone else
# (every minted nhb_… role) must present a SCRAM-SHA-256 password.
local   all   {superuser}                   trust
host    all   {superuser}   127.0.0.1/32    trust
local   all   all                           scram-sha-256
host    all   all           127.0.0.1/32    scram-sha-256
"""

CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 60
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
"""

#: the logging collector writing every statement and connection (log ingestion tests); the
#: gateway's clusters go without it (they measure the gateway, not the log)
LOGGING_CONF = """
logging_collector = on
log_destination = 'stderr,jsonlog,csvlog'
log_line_prefix = '{prefix}'
log_directory = '{log_dir}'
log_filename = 'postgresql-%Y%m%d_%H%M%S'
log_rotation_age = 0
log_rotation_size = 0
log_file_mode = 0644
log_statement = 'all'
log_connections = on
log_disconnections = on
log_timezone = 'UTC'
"""


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: str) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", command]
    else:
        argv = ["/bin/sh", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@dataclass
class Cluster:
    root: Path
    data: Path
    log_dir: Path
    port: int
    bin_dir: Path

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def log_files(self, suffix: str) -> list[Path]:
        return sorted(self.log_dir.glob(f"*{suffix}"))

    def rotate_logs(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_rotate_logfile()")

    def stop(self) -> None:
        _as_postgres(f"{shlex.quote(str(self.bin_dir / 'pg_ctl'))} -D {shlex.quote(str(self.data))}"
                     " -m immediate -w stop")
        shutil.rmtree(self.root, ignore_errors=True)


def self_signed(directory: Path, name: str = "localhost") -> tuple[str, str]:
    """A self-signed certificate and key (PEM files in ``directory``)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def start_cluster(extra_conf: str = "", *, ssl: bool = False, logging: bool = True,
                  max_connections: int = 60) -> Cluster:
    """A throwaway cluster. ``logging``: the collector writes every statement (stderr,
    jsonlog, csvlog); ``ssl``: the server offers TLS (pg_hba still allows plain logins);
    ``extra_conf`` is appended to postgresql.conf."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="nhb-pgtest-"))
    os.chmod(root, 0o777)
    data, log_dir = root / "data", root / "log"
    log_dir.mkdir()
    os.chmod(log_dir, 0o777)
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
        shutil.chown(log_dir, user="postgres")
    result = _as_postgres(f"{shlex.quote(str(bin_dir / 'initdb'))} -D {shlex.quote(str(data))}"
                          f" -U {SUPERUSER} --auth=trust --encoding=UTF8 --no-sync --no-instructions")
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed: {result.stderr}")
    port = free_port()
    conf = CONF.format(port=port, socket_dir=root).replace("max_connections = 60",
                                                            f"max_connections = {max_connections}")
    if logging:
        conf += LOGGING_CONF.format(log_dir=log_dir, prefix=LOG_PREFIX)
    conf += extra_conf
    if ssl:
        cert, key = self_signed(root)
        _as_postgres(f"cp {cert} {data / 'server.crt'} && cp {key} {data / 'server.key'}"
                     f" && chmod 600 {data / 'server.key'}")
        conf += "\nssl = on\n"
    _as_postgres(f"cat >> {shlex.quote(str(data / 'postgresql.conf'))} <<'EOF'\n{conf}\nEOF")
    _as_postgres(f"cat > {shlex.quote(str(data / 'pg_hba.conf'))} <<'EOF'\n"
                 f"{HBA.format(superuser=SUPERUSER)}\nEOF")
    result = _as_postgres(f"{shlex.quote(str(bin_dir / 'pg_ctl'))} -D {shlex.quote(str(data))}"
                          f" -l {shlex.quote(str(root / 'startup.log'))} -w -t 60 start")
    if result.returncode != 0:
        startup = (root / "startup.log").read_text() if (root / "startup.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{startup}")
    cluster = Cluster(root=root, data=data, log_dir=log_dir, port=port, bin_dir=bin_dir)
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(cluster.admin_dsn, connect_timeout=2):
                break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                cluster.stop()
                raise
            time.sleep(0.2)
    return cluster


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """:func:`start_cluster` for a fixture: a cluster that cannot start fails the test, never
    skips it; the cluster is stopped and its folder removed afterwards."""
    try:
        started = start_cluster()
    except Exception as exc:  # noqa: BLE001 - a failure, never a skip
        pytest.fail(f"could not start a throwaway PostgreSQL cluster: {exc}")
    try:
        yield started
    finally:
        started.stop()
