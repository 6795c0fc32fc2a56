"""Typed configuration (broker/config.py): every BROKER_* value is read as the type the docs
give, unknown names are reported and never loaded, misconfiguration is one line, and every
variable the code reads is documented."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker import config as cfg
from broker import create_app

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    base.update({"BROKER_STATE_DIR": str(tmp_path / "state"),
                 "BROKER_POLICY_DIR": str(REPO / "policies" / "demo"), **env})
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True,
                          text=True, env=base, timeout=60, cwd=tmp_path)


def test_a_numeric_secret_key_stays_text_and_is_refused_as_too_short(monkeypatch, tmp_path):
    monkeypatch.setenv("BROKER_SECRET_KEY", "12345")
    with pytest.raises(cfg.ConfigError, match="BROKER_SECRET_KEY must be at least 32 characters"):
        create_app({"POLICY_DIR": str(REPO / "policies" / "demo"), "STATE_DIR": str(tmp_path)})


def test_a_long_secret_key_is_used_as_text(monkeypatch, tmp_path):
    key = "0123456789" * 4
    monkeypatch.setenv("BROKER_SECRET_KEY", key)
    app = create_app({"POLICY_DIR": str(REPO / "policies" / "demo"), "STATE_DIR": str(tmp_path),
                      "REAPER_INTERVAL": 0, "CHECKPOINT_INTERVAL": 0})
    try:
        assert app.secret_key == key.encode()
    finally:
        app.extensions["broker"].close()


def test_flask_keys_cannot_be_switched_on_from_the_environment(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("BROKER_TESTING", "1")
    monkeypatch.setenv("BROKER_DEBUG", "true")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "0")
    app = create_app({"POLICY_DIR": str(REPO / "policies" / "demo"), "STATE_DIR": str(tmp_path),
                      "REAPER_INTERVAL": 0})
    try:
        assert not app.config.get("TESTING") and not app.debug
        assert app.config["CHECKPOINT_INTERVAL"] == 0.0          # a real setting, typed
    finally:
        app.extensions["broker"].close()
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "broker.config")
    assert "BROKER_TESTING" in warned and "BROKER_DEBUG" in warned


@pytest.mark.parametrize("variable, value, message", [
    ("BROKER_REAPER_INTERVAL", "soon", "BROKER_REAPER_INTERVAL must be a number"),
    ("BROKER_POSTGRES_POOL_SIZE", "2.5", "BROKER_POSTGRES_POOL_SIZE must be an integer"),
    ("BROKER_POSTGRES_POOL_SIZE", "0", "BROKER_POSTGRES_POOL_SIZE must be at least 1"),
    ("BROKER_JWKS_TIMEOUT", "nan", "BROKER_JWKS_TIMEOUT must be a finite number"),
    ("BROKER_LOG_LEVEL", "loud", "BROKER_LOG_LEVEL must be DEBUG, INFO"),
    ("BROKER_SECRET_KEY", "short", "BROKER_SECRET_KEY must be at least 32 characters"),
])
def test_a_bad_value_is_one_line(variable, value, message):
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.env_config({variable: value})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    if variable == "BROKER_SECRET_KEY":
        assert value not in str(caught.value)         # a secret is never echoed


def test_types_follow_the_table():
    values, unknown = cfg.from_environ({
        "BROKER_APPROVAL_POLL_INTERVAL": "7", "BROKER_REDIS_TIMEOUT": "0.25",
        "BROKER_ISSUER": "https://broker.example", "BROKER_URL": "https://b", "BROKER_NOPE": "1",
        "BROKER_PROXY_FIX_X_FOR": "", "PATH": "/bin"})
    assert values == {"APPROVAL_POLL_INTERVAL": 7, "REDIS_TIMEOUT": 0.25,
                      "ISSUER": "https://broker.example"}
    assert unknown == ["BROKER_NOPE"]                  # BROKER_URL is a client variable


@pytest.mark.parametrize("args, env, message", [
    (("serve", "--port", "0"), {"BROKER_SECRET_KEY": "12345"},
     "BROKER_SECRET_KEY must be at least 32 characters"),
    (("keys", "list"), {"BROKER_SIGNER": "hsm:key1"}, "unknown BROKER_SIGNER 'hsm:key1'"),
    (("keys", "list"), {"BROKER_SIGNER": "vault-transit:broker"}, "needs BROKER_VAULT_ADDR"),
    (("serve", "--port", "0"), {"BROKER_SIGNER": "nonsense"}, "unknown BROKER_SIGNER"),
    (("serve", "--port", "0"), {"BROKER_REAPER_INTERVAL": "x"},
     "BROKER_REAPER_INTERVAL must be a number"),
    (("ledger", "verify"), {"BROKER_DATABASE_URL": "mysql://x"}, "unsupported ledger URL"),
], ids=["short secret", "unknown signer", "transit without vault", "serve bad signer",
        "bad number", "bad ledger url"])
def test_misconfiguration_is_one_line_without_a_traceback(tmp_path, args, env, message):
    result = _cli(*args, env=env, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_a_missing_optional_extra_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
            "from broker.cli import main\nmain(['ledger', 'verify'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/postgres"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'nhi-broker[postgres]'" in result.stderr


@pytest.mark.parametrize("env", [{}, {"PYTEST_CURRENT_TEST": "x"}], ids=["plain", "under pytest"])
def test_the_dev_issuer_needs_the_explicit_switch(env):
    code = ("import pytest\nfrom broker.devtools.dev_issuer import DevIssuer\n"
            "try:\n    DevIssuer()\nexcept RuntimeError as e:\n    print('refused', e)\n"
            "else:\n    print('started')")
    base = {k: v for k, v in os.environ.items() if k != "BROKER_INSECURE_DEV_ISSUER"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**base, **env}, timeout=60)
    assert result.stdout.startswith("refused") and "BROKER_INSECURE_DEV_ISSUER=1" in result.stdout


def test_every_broker_variable_the_code_reads_is_documented():
    documented = (REPO / "README.md").read_text() + "".join(
        p.read_text() for p in (REPO / "docs").glob("*.md"))
    used = set()
    for path in (REPO / "broker").rglob("*.py"):
        used.update(re.findall(r"BROKER_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()))
    used.update(cfg.documented_names())
    prefixes = {"BROKER_VAULT_", "BROKER_CREDENTIAL_"}
    missing = sorted(v for v in used if v not in documented and v + "_" not in prefixes
                     and not v.startswith("BROKER_TEST_"))
    assert missing == []
