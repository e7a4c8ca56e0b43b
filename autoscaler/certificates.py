"""X.509 for our HTTPS endpoints: a self-managed CA and serving certificates, pure (no I/O).

ECDSA P-256 keys; the CA lives 10 years, a serving certificate 90 days and is renewed once a
third of its life is left (or when the names it must cover change), so there are weeks of
margin for a renewal that fails.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 90
RENEW_WHEN_LEFT = 1 / 3


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return pem(self.cert)

    @staticmethod
    def create(cn: str, days: float = CA_DAYS, now: datetime.datetime | None = None) -> "Authority":
        key = ec.generate_private_key(ec.SECP256R1())
        start = now or _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(minutes=5))
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return Authority(key, cert)

    @staticmethod
    def load(cert_pem: str, key_pem_text: str) -> "Authority":
        key = serialization.load_pem_private_key(key_pem_text.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        return Authority(key, x509.load_pem_x509_certificate(cert_pem.encode()))

    def issue(
        self,
        cn: str,
        names: list[str],
        client: bool = False,
        days: float = SERVING_DAYS,
        now: datetime.datetime | None = None,
        peer: bool = False,
    ) -> tuple[str, str]:
        """(certificate PEM, key PEM) for `cn`: a server certificate for DNS names / IPs in
        `names`, a client certificate when `client`, or both when `peer` (our components
        authenticate each other with it: the decision stream's mutual TLS)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = now or _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(minutes=5))
            .not_valid_after(start + datetime.timedelta(days=days))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        if peer:
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(self.key, hashes.SHA256())
        return pem(cert), key_pem(key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service is reached by; the API server uses <service>.<namespace>.svc."""
    base = f"{service}.{namespace}"
    return [service, base, f"{base}.svc", f"{base}.svc.cluster.local"]


def needs_renewal(cert_pem: str, ca_pem: str, names: list[str], now: datetime.datetime | None = None) -> str:
    """Why the serving certificate must be issued again ('' when it need not)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
    except ValueError:
        return "unreadable certificate"
    if cert.issuer != ca.subject:
        return "issued by another CA"
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        covered = set(alternatives.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        covered = set()
    if not set(names) <= covered:
        return f"does not cover {sorted(set(names) - covered)}"
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:  # issued before the decision stream's mutual TLS
        return "cannot authenticate as a client"
    now = now or _now()
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < life * RENEW_WHEN_LEFT:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return ""
