"""`fhir-server clients` and `fhir-server users`: add, list, remove; secrets shown once and never listed."""

import json
import os
import subprocess
from pathlib import Path

import psycopg
from joserfc.jwk import ECKey

from tests.test_cli import CLI


def run_cli(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, input=input,
                          env={**os.environ, **(env or {})})


def test_help() -> None:
    for command in (["clients"], ["users"], ["clients", "add"], ["clients", "list"], ["clients", "remove"],
                    ["users", "add"], ["users", "list"], ["users", "remove"]):
        assert run_cli(*command, "--help").returncode == 0, command


def test_clients_and_users(database_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    env = {"FHIR_DATABASE_URL": database_url}
    added = subprocess_ok(run_cli("users", "add", "alice", "--password-stdin", "--fhir-user", "Practitioner/7",
                                  env=env, input="s3cret pw\n"))
    assert "alice" in added
    assert db.execute("SELECT password_hash FROM auth_user").fetchone()[0].startswith("$argon2id$")
    assert run_cli("users", "add", "alice", "--password-stdin", env=env, input="x\n").returncode == 1

    public = subprocess_ok(run_cli("clients", "add", "Growth chart", "--type", "public", "--redirect-uri",
                                   "https://app.example/cb", "--redirect-uri", "http://localhost:9000/cb",
                                   "--scope", "launch/patient patient/*.rs", "--pre-approved-user", "alice", env=env))
    public_id = public.split("client_id: ")[1].split()[0]
    assert "client_secret" not in public
    symmetric = subprocess_ok(run_cli("clients", "add", "Reporter", "--type", "confidential-symmetric",
                                      "--scope", "system/*.rs", "--client-id", "reporter", env=env))
    secret = symmetric.split("client_secret: ")[1].split()[0]
    key = ECKey.generate_key("P-384", private=True)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    subprocess_ok(run_cli("clients", "add", "Bulk", "--type", "confidential-asymmetric", "--scope", "system/*.rs",
                          "--jwks-file", str(tmp_path / "jwks.json"), "--client-id", "bulk", env=env))
    (tmp_path / "private.json").write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    refused = run_cli("clients", "add", "Leaky", "--type", "confidential-asymmetric",
                      "--jwks-file", str(tmp_path / "private.json"), env=env)
    assert refused.returncode == 1 and "private key material" in refused.stderr

    listed = subprocess_ok(run_cli("clients", "list", env=env))
    assert public_id in listed and "reporter" in listed and "bulk" in listed and "pre-approved-user=alice" in listed
    assert secret not in listed
    assert "alice  fhir-user=Practitioner/7" in subprocess_ok(run_cli("users", "list", env=env))

    subprocess_ok(run_cli("clients", "remove", "reporter", env=env))
    assert run_cli("clients", "remove", "reporter", env=env).returncode == 1
    subprocess_ok(run_cli("users", "remove", "alice", env=env))
    assert db.execute("SELECT count(*) FROM auth_user").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM auth_client").fetchone()[0] == 2


def subprocess_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout
