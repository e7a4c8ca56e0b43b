"""TLS for our HTTPS servers: serving certificate and trusted client CA, reloaded without a restart.

Every handshake passes through an SNI callback that hands it the newest context (it is called
with or without SNI), so a rotated certificate, key or client CA applies to new connections as
soon as it has been read. A file that fails to load leaves the previous context serving.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)


def tls_files_problem(cert_file: Path, key_file: Path, exc: Exception) -> InputError:
    """What is wrong with a certificate and key OpenSSL would not load, said for a person."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        path = exc.filename or cert_file
        problem = "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read: {exc.strerror or exc}"
        return InputError(str(path), "", problem)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (ValueError, IndexError):
        return InputError(str(cert_file), "", "not a PEM certificate")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError):
        return InputError(str(key_file), "", "not a PEM private key (or an encrypted one)")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        return InputError(str(key_file), "", f"the private key does not match the certificate {cert_file}")
    return InputError(f"{cert_file} / {key_file}", "", f"cannot serve with them: {exc}")


class ReloadingTLS:
    def __init__(self, cert_file: Path, key_file: Path, client_ca_pem: str = "", ask_client_certificate: bool = False):
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self._client_ca_pem = client_ca_pem
        self._ask = ask_client_certificate or bool(client_ca_pem)
        try:
            self._stamp = self._file_stamp()
            self._current = self._build()
        except (OSError, ssl.SSLError) as exc:
            raise tls_files_problem(self.cert_file, self.key_file, exc) from None
        self.front = self._build()
        # Whether a client certificate is asked for is fixed when a handshake starts, from this
        # context (OpenSSL does not take the verify mode from the one the SNI callback swaps in);
        # the trusted CAs are the swapped-in context's. So a server that may trust a client CA
        # later (the metrics adapter before the request-header CA is published) asks from the
        # start; until a CA is known, a certificate offered is refused in the handshake.
        if self._ask:
            self.front.verify_mode = ssl.CERT_OPTIONAL
        self.front.sni_callback = self._select

    def _file_stamp(self) -> tuple:
        return tuple(os.stat(f).st_mtime_ns for f in (self.cert_file, self.key_file))

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self._client_ca_pem or self._ask:
            # a client certificate is asked for, not required: token clients present none
            context.verify_mode = ssl.CERT_OPTIONAL
        if self._client_ca_pem:
            context.load_verify_locations(cadata=self._client_ca_pem)
        return context

    def _select(self, ssl_object, server_name, _context) -> None:
        ssl_object.context = self._current

    def reload(self) -> bool:
        """Rebuild from disk; returns whether the serving context changed."""
        try:
            self._current = self._build()
            self._stamp = self._file_stamp()
            return True
        except (OSError, ssl.SSLError) as exc:
            log.error("keeping the previous TLS configuration: cannot load %s / %s: %s", self.cert_file, self.key_file, exc)
            return False

    def set_client_ca(self, pem: str) -> None:
        if pem != self._client_ca_pem:
            self._client_ca_pem = pem
            self.reload()

    async def watch(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                changed = self._file_stamp() != self._stamp
            except OSError:
                continue  # mid-rotation: files briefly missing
            if changed and self.reload():
                log.info("reloaded serving certificate from %s", self.cert_file)


def is_loopback(address: str) -> bool:
    """Whether host:port names this machine only: where we allow plaintext (tests, local runs)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
