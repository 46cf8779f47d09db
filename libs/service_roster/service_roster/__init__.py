"""The roster: every API service declared once, in `services/<name>/service.toml`.

nginx's upstreams, routes and body limits, local mode's processes, each service's model and body
limit, and the tests' lists come from here; the committed files it determines (k8s, Prometheus,
compose.swarm.yaml, the services table) are written from it by `./stack generate` (roster_files),
and compose.yaml is checked against it by tests. Standard library only (tomllib): nginx's image
build reads it too.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import tomllib
from pathlib import Path

ROSTER_FILE = "service.toml"
_SIZE = re.compile(r"^(\d+)([km]?)$")


@dataclasses.dataclass(frozen=True)
class Service:
    name: str  # the folder, the compose service, the k8s objects, the Prometheus job
    package: str  # its Python package
    # "module:Class": its service_kit.core.service.ModelService (hooks, operations, settings);
    # gunicorn serves it, the OpenAPI document is written from its operations.
    service: str
    routes: tuple[str, ...]  # public path prefixes nginx sends to it, with everything below them
    body_limit: str  # largest request body, in nginx's notation ("512k", "20m")
    model: str  # in models.config: the model it asks (MODEL_NAME); it is ready when that is AVAILABLE
    # "module:function" run once in gunicorn's master before its workers fork (memory they then
    # share) and once at image build (caches it writes are baked in); "" for none.
    preload: str = ""
    # Requests that state a deadline (X-Request-Timeout-Ms) one instance is given at once; nginx
    # refuses the next with a JSON 503 and Retry-After, in microseconds of its own CPU, instead of
    # letting it queue where it would be refused (or answered late) at the cost of a whole request
    # cycle in a worker. 0: no bound.
    max_in_flight: int = 0

    @property
    def body_limit_bytes(self) -> int:
        number, unit = _SIZE.match(self.body_limit).groups()
        return int(number) * {"": 1, "k": 2**10, "m": 2**20}[unit]

    @property
    def body_limit_text(self) -> str:
        """For people: "512 KB", "20 MB"."""
        number, unit = _SIZE.match(self.body_limit).groups()
        return f"{number} {unit.upper()}B" if unit else f"{number} bytes"

    @property
    def upstream(self) -> str:
        """nginx's name for its group of instances."""
        return self.name.replace("-", "_")


def read_service(path: Path) -> Service:
    """One roster file; a missing or mistyped field stops whoever reads it, naming the file."""
    data = tomllib.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(Service)}
    required = {f.name for f in dataclasses.fields(Service) if f.default is dataclasses.MISSING}
    if not required <= set(data) <= fields:
        raise ValueError(f"{path}: fields {sorted(data)}, expected {sorted(required)} and optionally "
                         f"{sorted(fields - required)}")
    service = Service(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    if type(service.max_in_flight) is not int or service.max_in_flight < 0:
        raise ValueError(f"{path}: max_in_flight {service.max_in_flight!r} is not a whole number >= 0")
    if not _SIZE.match(service.body_limit):
        raise ValueError(f"{path}: body_limit {service.body_limit!r} is not like 512k or 20m")
    if not service.routes or not all(r.startswith("/") and not r.endswith("/") for r in service.routes):
        raise ValueError(f"{path}: routes must be paths like /lstm")
    return service


def service_of(module_file: str) -> Service:
    """The roster entry of the service a module belongs to: `<service>/<package>/<module>.py` reads
    `<service>/service.toml` (in the repository, and in /app in the service's image alike)."""
    return read_service(Path(module_file).resolve().parents[1] / ROSTER_FILE)


def entry_of(cls: type) -> Service | None:
    """The roster entry of the service a class (or the nearest class it extends) is defined in
    (`<service>/<package>/<module>.py`), or None for one outside any service's folder (a test's)."""
    for defining in cls.__mro__:
        module = sys.modules.get(defining.__module__)
        path = Path(getattr(module, "__file__", None) or ".").resolve().parents[1] / ROSTER_FILE
        if path.is_file():
            return read_service(path)
    return None


def service_class(service: Service) -> type:
    """The entry's ModelService class (its `service`, "module:Class"), imported."""
    module, _, name = service.service.partition(":")
    return getattr(importlib.import_module(module), name)


def run_preload(service: Service) -> None:
    if service.preload:
        module, _, function = service.preload.partition(":")
        getattr(importlib.import_module(module), function)()


def load(services_dir: Path) -> list[Service]:
    """Every service under `services_dir` that has a roster file, by name."""
    services = []
    for path in sorted(services_dir.glob(f"*/{ROSTER_FILE}")):
        services.append(read_service(path))
        if services[-1].name != path.parent.name:  # (in an image the file sits in /app: only here)
            raise ValueError(f"{path}: name {services[-1].name!r} is not its folder's name {path.parent.name!r}")
    routes = [route for service in services for route in service.routes]
    if len(routes) != len(set(routes)):
        raise ValueError(f"a route is claimed twice: {sorted(routes)}")
    return services
