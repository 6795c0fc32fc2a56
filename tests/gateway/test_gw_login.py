"""Logins: refusals are FATAL 28000/28P01 without the secret, TLS is enforced off loopback,
expiry ends the session, and the token is no password for the database itself."""
from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from tests.gateway.gw_support import CREDENTIAL, ROLE, TOKEN, running, tokens, write_config
from tests.support.pg_cluster import free_port, self_signed


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


def test_tls_is_required_off_loopback(cluster, tmp_path):
    cert, key = self_signed(tmp_path, "gateway.test")
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


@pytest.mark.parametrize("sslmode", ["require", "disable"])
def test_upstream_tls_per_sslmode(cluster, tmp_path, sslmode):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(),
                      gateway={"upstream": {"host": "127.0.0.1", "port": cluster.port, "sslmode": sslmode}})
    with running(gw):
        with psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb") as conn:
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
            with psycopg.connect(cluster.dsn("gwdb")) as admin:
                (ssl,) = admin.execute("select ssl from pg_stat_ssl where pid = %s",
                                       (pid,)).fetchone() or (None,)
        assert ssl is (sslmode == "require")
        connect = next(r for r in gw.wait_records(lambda rs: any(r["type"] == "connect" for r in rs))
                       if r["type"] == "connect")
        assert connect["upstream_tls"] is (sslmode == "require")


def test_service_role_sets_application_name_to_the_credential(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(),
                      gateway={"login": "service-role", "service_dsn_env": "UNUSED_BY_THE_TEST_AUTHENTICATOR"})
    with running(gw):
        with psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb"
                             "?application_name=client-said") as conn:
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
            with psycopg.connect(cluster.dsn("gwdb")) as admin:
                (name,) = admin.execute("select application_name from pg_stat_activity where pid = %s",
                                        (pid,)).fetchone() or (None,)
    assert name == CREDENTIAL


def test_gssenc_is_declined_and_plain_ssl_request_answered_on_loopback(gateway):
    import socket
    import struct

    from broker.gateway import protocol as p

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(struct.pack("!II", 8, p.GSSENC_REQUEST_CODE))
        assert s.recv(1) == b"N"
        s.sendall(p.ssl_request())
        assert s.recv(1) == b"N"                    # loopback listener without TLS files
        s.sendall(p.startup_message({"user": CREDENTIAL, "database": "gwdb"}))
        kind, length, code = struct.unpack("!cII", s.recv(9))
        assert kind == b"R" and code == p.AUTH_CLEARTEXT


def test_health_check(cluster, tmp_path):
    import json
    import urllib.request

    health = free_port()
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(), workers=2)
    config = json.loads(gw.config_path.read_text())
    config["health"] = f"127.0.0.1:{health}"
    gw.config_path.write_text(json.dumps(config))
    with running(gw):
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as answer:
            body = json.load(answer)
    assert body["status"] == "ok" and body["workers"] == 2
