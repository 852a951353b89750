"""``make wheelhouse``: the wheels an offline node needs to run the suite with its own Python and its own torch.

A GPU node of a cluster often has a CUDA build of torch and no route to a package index. This script takes the
locked versions (``requirements-lock.txt``), drops what the node already has (``--have``: the names of
``pip list`` there) and what it must keep its own of (torch, torchvision, triton, the CUDA libraries), and
downloads a wheel of each of the rest for the node's Python (``--python-version``, manylinux x86_64); a
package published only as a source archive is built into a wheel here (they are pure Python). On the node::

    python3 -m pip install --no-index --no-deps --target <dir> .whl/*.whl && export PYTHONPATH=<dir>:$PWD

``make gpu-check`` does that itself. Uses the standard library only (it runs before any venv exists).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

#: what the node keeps its own build of: its CUDA torch and everything built against it
NODE_OWN = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
#: optional integrations not needed to train, evaluate or benchmark (S3, PostgreSQL, CLIP, Optuna, SLURM)
OPTIONAL = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "psycopg2-binary", "open-clip-torch", "ftfy",
                      "optuna", "optuna-integration", "colorlog", "submitit", "hydra-submitit-launcher",
                      "hydra-joblib-launcher"})
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock_text: str) -> list[tuple[str, str]]:
    """``(name, version)`` of every ``name==version`` line of a lock file (markers and hashes dropped)."""
    pins = []
    for line in lock_text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip().rstrip("\\").strip()
        if "==" in line and not line.startswith("-"):
            name, version = (part.strip() for part in line.split("==", 1))
            pins.append((normalized(name.split("[", 1)[0]), version))
    return pins


def wanted(pins: list[tuple[str, str]], have: set[str], include_optional: bool = False) -> list[str]:
    """The ``name==version`` requirements to fetch: locked, not on the node, not the node's own build."""
    have = {normalized(n) for n in have}
    return [f"{name}=={version}" for name, version in pins
            if name not in have and not NODE_OWN.match(name) and (include_optional or name not in OPTIONAL)]


def read_have(path: str | None) -> set[str]:
    """Names from a file: one per line or comma-separated; ``pip list`` / ``pip freeze`` output works too."""
    if not path:
        return set()
    text = Path(path).read_text()
    names = re.split(r"[,\n]", text)
    return {normalized(re.split(r"[\s=<>]", n.strip(), maxsplit=1)[0]) for n in names if n.strip()} - {""}


def fetch(requirement: str, out: Path, python_version: str) -> str:
    """Download a binary wheel of ``requirement`` for the node, or build one from its source archive."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(out), requirement]
    if subprocess.run(download, capture_output=True).returncode == 0:
        return "downloaded"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), requirement]
    if subprocess.run(build, capture_output=True).returncode == 0:
        return "built from source"
    return "FAILED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", default="requirements-lock.txt")
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--have", default=None, help="file of the package names the node already has")
    parser.add_argument("--out", default=".whl")
    parser.add_argument("--include-optional", action="store_true", help=f"also {', '.join(sorted(OPTIONAL))}")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    requirements = wanted(locked_pins(Path(args.lock).read_text()), read_have(args.have), args.include_optional)
    failed = [r for r in requirements if fetch(r, out, args.python_version) == "FAILED"]
    size = sum(f.stat().st_size for f in out.glob("*.whl")) / 2 ** 20
    print(f"{len(requirements) - len(failed)} of {len(requirements)} wheels in {out} ({size:.1f} MiB)")
    for r in failed:
        print(f"  no wheel for {r}: fetch it by hand into {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
