"""Self-signed certificates for TLS tests, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(
    directory: Path, name: str = "cert", cn: str = "localhost", san: str = "DNS:localhost,IP:127.0.0.1"
) -> tuple[Path, Path]:
    """(certificate, key) PEM files ``<name>.pem`` / ``<name>.key`` in ``directory``, valid two days."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
