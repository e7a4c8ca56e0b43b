"""Real X.509 material for TLS tests, made by autoscaler.certificates and written to files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoscaler import certificates


@dataclass(frozen=True)
class Authority:
    ca: certificates.Authority

    @property
    def pem(self) -> str:
        return self.ca.pem

    @staticmethod
    def create(cn: str) -> "Authority":
        return Authority(certificates.Authority.create(cn, days=1))

    def issue(self, cn: str, directory: Path, server: bool = False, peer: bool = False) -> tuple[Path, Path]:
        """Write `cn`.crt and `cn`.key signed by this CA (a server certificate for localhost and
        127.0.0.1, else a client certificate; both with `peer`, as our components have); returns
        their paths."""
        names = ["localhost", "127.0.0.1"] if server or peer else []
        cert, key = self.ca.issue(cn, names, client=not server, days=1, peer=peer)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
        cert_path.write_text(cert)
        key_path.write_text(key)
        return cert_path, key_path
