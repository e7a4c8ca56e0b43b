"""Key files written 0600 and atomically (autoscaler/files.py, webhook/certificate_manager.py's
Material.write). The certificate Secrets themselves (the CA's key in a Secret of its own, an older
combined Secret migrated keeping its CA) are tested against the real kube-apiserver in
tests/e2e/test_certificates.py."""

from __future__ import annotations

import os
import stat
import threading

from autoscaler import certificates
from autoscaler.files import write_private
from webhook.certificate_manager import Material


def test_key_files_are_private_and_never_seen_half_written(tmp_path):
    path = tmp_path / "tls.key"
    versions = ["A" * 64_000, "B" * 64_000]  # large enough that a plain write lands in pieces
    write_private(path, versions[0])
    seen, done = set(), threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.add(path.read_text())
            except FileNotFoundError:
                seen.add("<missing>")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            write_private(path, versions[i % 2])
    finally:
        done.set()
        thread.join()
    assert seen <= set(versions), sorted(s[:20] + f"... ({len(s)} chars)" for s in seen - set(versions))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["tls.key"]  # no temporary left behind


def test_the_written_serving_key_is_private(tmp_path):
    ca = certificates.Authority.create("ca")
    cert, key = ca.issue("webhook", ["webhook"])
    Material(ca.pem, cert, key).write(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert stat.S_IMODE(os.stat(tmp_path / "tls.key").st_mode) == 0o600
    assert (tmp_path / "tls.key").read_text() == key and (tmp_path / "tls.crt").read_text() == cert
