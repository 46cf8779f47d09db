"""STAND-INS for the official base images, for machines that cannot pull from an image registry
(this project's own machines and CI). For the test suite only: never pushed, never used where the
official image can be pulled, and never named like the official image.

Each stand-in is a Debian root file system made by `debootstrap --variant=minbase`, finished in a
chroot and turned into an image with `docker import`. Its tag carries a hash of its recipe and of
the host's certificate bundle, so it is rebuilt only when one of those changes.

    .venv/bin/python -m tests.compose.stand_in_images      # build what is missing, print the build args
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# pip inside a build reaches PyPI only if the image trusts what the host trusts (the host may sit
# behind a proxy with its own certificate authority).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STAND_IN_REPOSITORY = "offline-stand-in"  # never an official name: see the module docstring


@dataclasses.dataclass(frozen=True)
class StandIn:
    official: str  # the image it stands in for
    build_arg: str  # the Dockerfile ARG that names the base image, or "" for a compose `image:`
    suite: str  # Debian suite to bootstrap
    packages: tuple[str, ...]
    finish: str  # shell run in the chroot after the packages are in
    changes: tuple[str, ...]  # `docker import --change` instructions

    @property
    def short_name(self) -> str:
        return self.official.split("/")[-1].split(":")[0]

    def tag(self, ca_bundle: bytes) -> str:
        recipe = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        digest = hashlib.sha256(recipe + ca_bundle).hexdigest()[:12]
        return f"{STAND_IN_REPOSITORY}/{self.short_name}:{digest}"


STAND_INS = (
    StandIn(
        official="python:3.11-slim",
        build_arg="PYTHON_IMAGE",
        suite="bookworm",  # its python3 is 3.11, as the official image's
        # python3-dev: the official image carries Python's headers (the API image compiles a C extension).
        packages=("python3", "python3-pip", "python3-dev", "python-is-python3", "ca-certificates"),
        # Debian marks its python externally managed; the official image's pip installs freely.
        finish="rm -f /usr/lib/python3.*/EXTERNALLY-MANAGED",
        changes=("ENV LANG=C.UTF-8", 'CMD ["python3"]'),
    ),
    StandIn(
        official="nginxinc/nginx-unprivileged:1.28.0-alpine",
        build_arg="NGINX_IMAGE",
        suite="sid",  # nginx >= 1.27.3, for `server ... resolve`
        packages=("nginx", "wget", "ca-certificates"),
        # As the official unprivileged image: user nginx (uid 101), listening on 8080, /tmp for state.
        finish=("groupadd --system --gid 101 nginx && useradd --system --uid 101 --gid 101 --no-create-home "
                "--home-dir /nonexistent --shell /usr/sbin/nologin nginx && mkdir -p /usr/share/nginx/html"),
        changes=("USER 101", "EXPOSE 8080", 'CMD ["nginx", "-g", "daemon off;"]'),
    ),
    StandIn(
        official="prom/prometheus:v3.5.0",
        build_arg="",
        suite="sid",  # Prometheus 3
        packages=("prometheus", "wget", "ca-certificates"),
        # Debian's build keeps its data in /var/lib/prometheus by default, the official one in /prometheus.
        finish=("mkdir -p /prometheus /var/lib/prometheus/metrics2 "
                "&& chown -R 65534:65534 /prometheus /var/lib/prometheus"),
        changes=("USER 65534", "WORKDIR /prometheus", "EXPOSE 9090",
                 'ENTRYPOINT ["/usr/bin/prometheus"]',
                 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'),
    ),
)


def _run(*args: str, stdin=None) -> None:
    result = subprocess.run(args, stdin=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} ... failed ({result.returncode}):\n{result.stdout[-2000:]}"
                           f"\n{result.stderr[-2000:]}")


def can_pull(image: str) -> bool:
    """Whether the official image is here or can be pulled (then no stand-in is used)."""
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return True
    try:
        return subprocess.run(["docker", "pull", "-q", image], capture_output=True, timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt sources use (never a hard-coded host)."""
    codename = _os_release().get("VERSION_CODENAME", "")
    listed = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI)", f"Codename: {codename}",
                             "Target-Of: deb"], capture_output=True, text=True, check=True).stdout.split()
    if not listed:
        raise RuntimeError("no Debian mirror in this machine's apt sources (run apt-get update first)")
    return listed[0]


def _os_release() -> dict[str, str]:
    lines = Path("/etc/os-release").read_text().splitlines()
    return {key: value.strip('"') for key, _, value in (line.partition("=") for line in lines) if value}


def _exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def build(stand_in: StandIn, tag: str) -> None:
    """debootstrap, finish in a chroot, strip caches, trust the host's CAs, `docker import`."""
    with tempfile.TemporaryDirectory(prefix=f"stand-in-{stand_in.short_name}-", dir="/var/tmp") as work:
        root = Path(work) / "root"
        _run("debootstrap", "--variant=minbase", f"--include={','.join(stand_in.packages)}", stand_in.suite,
             str(root), debian_mirror())
        _run("chroot", str(root), "/bin/sh", "-euc", stand_in.finish)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                      "usr/share/locale"):
            shutil.rmtree(root / cache, ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        changes = [arg for change in ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                      f"LABEL stands.in.for={stand_in.official}", *stand_in.changes)
                   for arg in ("--change", change)]
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        _run("docker", "import", *changes, "-", tag, stdin=tar.stdout)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {root} failed")
    # Older builds of the same stand-in are of no use any more.
    listed = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                             f"{STAND_IN_REPOSITORY}/{stand_in.short_name}"], capture_output=True, text=True)
    stale = [old for old in listed.stdout.split() if old != tag]
    if stale:
        subprocess.run(["docker", "image", "rm", *stale], capture_output=True)


def ensure(log=sys.stderr) -> dict[str, str]:
    """official image -> the image to use for it: the official one where it can be pulled, else
    a stand-in (built now, in parallel, if missing or out of date)."""
    ca_bundle = HOST_CA_BUNDLE.read_bytes()
    chosen = {s.official: s.official if can_pull(s.official) else s.tag(ca_bundle) for s in STAND_INS}
    missing = [s for s in STAND_INS if chosen[s.official] != s.official and not _exists(chosen[s.official])]
    for stand_in in missing:
        print(f"stand-in base image: building {chosen[stand_in.official]} for {stand_in.official}", file=log,
              flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(STAND_INS)) as pool:
        for done in [pool.submit(build, s, chosen[s.official]) for s in missing]:
            done.result()
    return chosen


def build_args(chosen: dict[str, str]) -> dict[str, str]:
    """The Dockerfiles' base-image build arguments for the images `ensure` chose."""
    return {s.build_arg: chosen[s.official] for s in STAND_INS if s.build_arg}


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("stand_in_images: debootstrap and chroot need root")
    for official, image in ensure().items():
        print(f"{official} -> {image}")
