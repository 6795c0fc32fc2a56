"""Logins: refusals are FATAL 28000/28P01 without the secret, TLS is enforced off loopback,
expiry ends the session, and the token is no password for the database itself."""
from __future__ import annotations

import datetime
import subprocess
import time

import psycopg
import pytest

from tests.gateway.gw_support import CREDENTIAL, ROLE, TOKEN, tokens
from tests.gateway.gw_cluster import free_port
from tests.gateway.gw_support import running, write_config


def test_wrong_token_is_refused_without_echoing_it(gateway):
    bad = "tok-wrong-" + "z" * 20
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(f"postgresql://{CREDENTIAL}:{bad}@127.0.0.1:{gateway.port}/gwdb")
    assert "invalid credential" in str(info.value) and bad not in str(info.value)
    refused = gateway.wait_records(lambda rs: any(r["type"] == "login_refused" for r in rs))[0]
    assert refused["sqlstate"] == "28P01" and refused["username"] == CREDENTIAL
    assert bad not in gateway.records_path.read_text()


def test_wrong_username_is_refused(gateway):
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(f"postgresql://someone-else:{TOKEN}@127.0.0.1:{gateway.port}/gwdb")
    assert "user name does not match" in str(info.value) and TOKEN not in str(info.value)


def test_the_token_does_not_work_against_the_database(cluster):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://{ROLE}:{TOKEN}@127.0.0.1:{cluster.port}/gwdb")


def test_upstream_refusal_is_a_short_fatal(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port,
                      tokens=tokens(upstream_password="not-the-role-password"))
    with running(gw):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb")
        assert "refused the gateway's login" in str(info.value)
        assert "not-the-role-password" not in str(info.value)


def test_expiry_ends_the_session(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(expires_in=2.5))
    with running(gw):
        conn = psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb", autocommit=True)
        with pytest.raises(psycopg.OperationalError) as info:
            for _ in range(100):
                conn.execute("select 1")
                time.sleep(0.1)
        assert "expired" in str(info.value)
        conn.close()
        disconnect = next(r for r in gw.wait_records(lambda rs: any(r["type"] == "disconnect" for r in rs))
                          if r["type"] == "disconnect")
        assert disconnect["reason"] == "credential expired"


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_tls_is_required_off_loopback(cluster, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    gw = write_config(tmp_path, port=port, upstream_port=cluster.port, tokens=tokens(),
                      gateway={"listen": f"0.0.0.0:{port}", "tls": {"cert_file": cert, "key_file": key}})
    with running(gw):
        dsn = f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{port}/gwdb"
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn + "?sslmode=disable")
        assert "requires TLS" in str(info.value)
        with psycopg.connect(dsn + "?sslmode=require") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.pgconn.ssl_in_use
        out = subprocess.run(["psql", dsn + "?sslmode=require", "-Atc", "select 2"], capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == "2"
        connect = next(r for r in gw.wait_records(lambda rs: any(r["type"] == "connect" for r in rs))
                       if r["type"] == "connect")
        assert connect["tls"] is True


def test_plaintext_listener_off_loopback_refuses_to_start(cluster, tmp_path):
    port = free_port()
    gw = write_config(tmp_path, port=port, upstream_port=cluster.port, tokens=tokens(),
                      gateway={"listen": f"0.0.0.0:{port}"})
    with pytest.raises(RuntimeError):
        gw.start()
    assert "tls (cert_file, key_file) is required" in gw.log()
