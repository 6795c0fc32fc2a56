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
    if os.geteuid() == 0:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", command]
    else:
        argv = ["/bin/sh", "-c", command]
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
        as_postgres(f"{shlex.quote(str(self.bin_dir / 'pg_ctl'))} -D {shlex.quote(str(self.data))}"
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
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def start_cluster(extra_conf: str = "", *, ssl: bool = False) -> Cluster:
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
    if ssl:                      # the server offers TLS; pg_hba still allows plain "host" logins
        cert, key = self_signed(root)
        as_postgres(f"cp {cert} {data / 'server.crt'} && cp {key} {data / 'server.key'}"
                    f" && chmod 600 {data / 'server.key'}")
        conf += "ssl = on\n"
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
