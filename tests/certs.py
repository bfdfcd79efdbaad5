"""Self-signed TLS certificates for test servers (``openssl``, installed by scripts/test)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """Write ``name.pem`` (a certificate for 127.0.0.1 and localhost, valid one day, its own
    CA) and ``name.key`` in ``folder``; return their paths."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (scripts/test installs it)")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
