"""A throwaway ECDSA P-256 PKI for one benchmark run, made with the openssl command line tool.

server-ca.pem  signs server.crt (SAN IP:127.0.0.1, DNS:localhost); the clients trust it
ca.pem         the client CA both proxies trust (it signs the client certificate directly)
client.crt     the benchmark client's certificate (clientAuth), client.key its key
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CLIENT_SUBJECT = "/C=US/O=Example Corp/OU=Bench/CN=bench-client-01"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key(name: str, cwd: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd
    )


def _ca(name: str, subject: str, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{name}.key",
        "-sha256",
        "-days",
        "30",
        "-subj",
        subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        f"{name}.pem",
        cwd=cwd,
    )


def _leaf(name: str, ca: str, subject: str, ext: str, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=cwd,
    )


def make_pki(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    _ca("server-ca", "/O=mtlsgw bench/CN=mtlsgw bench server CA", folder)
    _ca("ca", "/O=mtlsgw bench/CN=mtlsgw bench client CA", folder)
    _leaf(
        "server",
        "server-ca",
        "/O=mtlsgw bench/CN=localhost",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        folder,
    )
    _leaf(
        "client",
        "ca",
        CLIENT_SUBJECT,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:bench-client-01.example.com\n",
        folder,
    )
    out = subprocess.run(
        ["openssl", "x509", "-in", "client.crt", "-noout", "-fingerprint", "-sha256"],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    sha256 = out.strip().split("=", 1)[1].replace(":", "").lower()
    out = subprocess.run(
        ["openssl", "x509", "-in", "client.crt", "-noout", "-fingerprint", "-sha1"],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    sha1 = out.strip().split("=", 1)[1].replace(":", "").lower()
    return {
        "dir": str(folder),
        "server_ca": str(folder / "server-ca.pem"),
        "client_ca": str(folder / "ca.pem"),
        "server_crt": str(folder / "server.crt"),
        "server_key": str(folder / "server.key"),
        "client_crt": str(folder / "client.crt"),
        "client_key": str(folder / "client.key"),
        "client_sha256": sha256,
        "client_sha1": sha1,
        "client_subject": CLIENT_SUBJECT,
        "algorithm": "ECDSA P-256 (prime256v1), SHA-256 signatures",
    }
