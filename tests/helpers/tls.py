"""Certificates made for a test (a CA, a server, clients) and nginx's stream module in
front of a Temporal server: TLS with client certificates, ALPN h2, on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import free_port, port_open

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


class Authority:
    """A certificate authority of the test's own, writing its files under `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self._subject = subject
        self._cert = (
            _builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / f"{name}-ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool) -> KeyPair:
        """A certificate for `name` (a server's: localhost and 127.0.0.1; else a client's)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = _builder(subject, self._subject, key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
                ),
                critical=False,
            )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        pair = KeyPair(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        return pair


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


def nginx_missing() -> str | None:
    """Why the TLS proxy cannot run here, or None."""
    if shutil.which("nginx") is None:
        return "nginx is not installed (Debian: nginx)"
    if not STREAM_MODULE.exists():
        return "nginx's stream module is not installed (Debian: libnginx-mod-stream)"
    return None


@contextmanager
def tls_proxy(folder: Path, upstream: str, server: KeyPair, client_ca: Path) -> Iterator[str]:
    """nginx terminating TLS for `upstream` (host:port): it demands a client certificate
    signed by `client_ca` and speaks h2 by ALPN. Yields its address."""
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""
load_module {STREAM_MODULE};
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server.cert};
        ssl_certificate_key {server.key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        ssl_alpn h2;
        proxy_pass {upstream};
    }}
}}
"""
    )
    log = (folder / "nginx.out").open("w")
    proc = subprocess.Popen(
        ["nginx", "-e", str(folder / "error.log"), "-p", str(folder), "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            if port_open(port) or proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"nginx did not start: {(folder / 'nginx.out').read_text()}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
