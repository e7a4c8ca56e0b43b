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

log = logging.getLogger(__name__)


class ReloadingTLS:
    def __init__(self, cert_file: Path, key_file: Path, client_ca_pem: str = ""):
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self._client_ca_pem = client_ca_pem
        self._stamp = self._file_stamp()
        self._current = self._build()
        self.front = self._build()
        self.front.sni_callback = self._select

    def _file_stamp(self) -> tuple:
        return tuple(os.stat(f).st_mtime_ns for f in (self.cert_file, self.key_file))

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self._client_ca_pem:
            # a client certificate is asked for, not required: token clients present none
            context.verify_mode = ssl.CERT_OPTIONAL
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
