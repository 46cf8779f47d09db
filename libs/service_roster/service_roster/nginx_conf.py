"""nginx.conf from services/nginx/nginx.conf.template and the roster, for one of the two modes.

    python -m service_roster.nginx_conf compose --repo . > nginx.conf     (the nginx image build)
    python -m service_roster.nginx_conf local --repo . --listen 127.0.0.1:8080 --run-dir .run/nginx \
        --upstream text-api=127.0.0.1:8101 --upstream vision-api=127.0.0.1:8201

Only the placeholders differ between modes; routing, limits, timeouts and retries are the
template's, and which routes go where, with which body limit, is the roster's: compose, local
mode and a new service cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from service_roster import Service, load

TEMPLATE = Path("services") / "nginx" / "nginx.conf.template"
STATIC = Path("services") / "nginx" / "static"  # the demo page, the API page, openapi.json
COMPOSE_PORT = 8000  # what every API service's gunicorn binds in its container
COMPOSE_LISTEN = "8080"  # the unprivileged nginx image cannot bind 80


BOUNDED = "_bounded"  # the upstream group of a service's requests that state a deadline
RETRY = "_retry"  # the same instances, for one more pass of a request that found none live


def _servers(addresses: list[str], resolve: bool, max_conns: int = 0, skip_failed: bool = True) -> str:
    # A replica that refuses connections is skipped for 2 s, then tried again (nginx's default, 10 s,
    # kept a replica that refused while it started out of rotation for 10 s after it listened).
    suffix = (" resolve" if resolve else "") + (" max_fails=1 fail_timeout=2s" if skip_failed else " max_fails=0")
    if max_conns:
        suffix += f" max_conns={max_conns}"
    return "\n".join(f"        server {address}{suffix};" for address in addresses)


def _upstream(name: str, servers: str) -> str:
    return f"""    upstream {name} {{
        zone {name} 64k;
        least_conn;
{servers}
        keepalive 64;
        # Shorter than gunicorn's keepalive (5 s): nginx closes idle connections first.
        keepalive_timeout 4s;
    }}"""


def _upstreams(services: list[Service], addresses: dict[str, list[str]], resolve: bool) -> str:
    """Each service's instances (with `resolve`, each replica the name resolves to); again, none
    skipped for having failed, for the one more pass of a request that found no instance live
    (the template's @another_instance); and for a service with `max_in_flight`, a third time:
    requests that state a deadline go there, where each instance takes at most that many at once."""
    blocks = []
    for service in services:
        blocks.append(_upstream(service.upstream, _servers(addresses[service.name], resolve)))
        blocks.append(_upstream(service.upstream + RETRY,
                                _servers(addresses[service.name], resolve, skip_failed=False)))
        if service.max_in_flight:
            blocks.append(_upstream(service.upstream + BOUNDED,
                                    _servers(addresses[service.name], resolve, service.max_in_flight)))
            # The whole group name in one variable: nginx finds a defined group by it (no DNS).
            blocks.append(f"""    map $http_x_request_timeout_ms ${service.upstream}_group {{
        "" {service.upstream};
        default {service.upstream + BOUNDED};
    }}""")
    return "\n\n".join(blocks)


def _locations(services: list[Service]) -> str:
    blocks = []
    for service in services:
        group = f"${service.upstream}_group" if service.max_in_flight else service.upstream
        for route in service.routes:
            for match in (f"= {route}", f"{route}/"):
                blocks.append(f"""        location {match} {{
            client_max_body_size {service.body_limit};
            proxy_pass http://{group};
        }}""")
    return "\n".join(blocks)


def route_index(services: list[Service], document: dict) -> list[str]:
    """What `GET /` lists: each service's operations in the OpenAPI document (written from their
    request models by `./stack generate`), `GET|POST /path` where a path takes both, a required query
    field shown as `?name=BASE64` (or `=...`)."""
    index: dict[str, list[str]] = {}
    for service in services:
        for path, operations in document["paths"].items():
            if not any(path == route or path.startswith(route + "/") for route in service.routes):
                continue
            for method, operation in operations.items():
                query = "&".join(f"{p['name']}={'BASE64' if p['schema'].get('contentEncoding') == 'base64' else '...'}"
                                 for p in operation.get("parameters", []) if p["in"] == "query" and p.get("required"))
                index.setdefault(f"{path}?{query}" if query else path, []).append(method.upper())
    return [f"{'|'.join(sorted(methods))} {target}" for target, methods in index.items()]


def openapi_document(static_dir: Path) -> dict:
    """The committed OpenAPI document (services/nginx/static/openapi.json, or its copy)."""
    return json.loads((static_dir / "openapi.json").read_text())


def _roster_values(services: list[Service], addresses: dict[str, list[str]], resolve: bool,
                   static_dir: Path) -> dict[str, str]:
    index = route_index(services, openapi_document(static_dir))
    limits = ", ".join(f"{service.body_limit_text} for {', '.join(service.routes)}" for service in services)
    return {
        "upstreams": _upstreams(services, addresses, resolve),
        "locations": _locations(services),
        # Inside nginx's single-quoted strings: JSON has no single quotes to escape.
        "route_index": json.dumps(index, ensure_ascii=True),
        "body_limits": limits,
    }


def values_for_compose(services: list[Service], static_dir: Path) -> dict[str, str]:
    """`static_dir`: the repository's services/nginx/static (the image serves a copy of it)."""
    return {
        "worker_processes": "# (set by start-nginx.sh)",
        "pid_file": "/tmp/nginx.pid",
        "error_log": "/dev/stderr",
        "access_log": "/dev/stdout json_lines",
        # nginx creates each temp folder but not its parents: /tmp exists in every image.
        "temp_dir": "/tmp",
        "static_dir": "/usr/share/nginx/html",
        # Docker's embedded DNS, re-resolved every second so scaled replicas join and leave. Swarm
        # takes a stopping task out of DNS 2 s before its SIGTERM: nginx has let it go by then (with
        # 5 s it still sent requests to a gunicorn shutting down; one in ~2,000 of a rolling update's
        # POSTs got a 502 that way, tests/swarm).
        "resolver": "    resolver 127.0.0.11 valid=1s ipv6=off;\n    resolver_timeout 2s;\n",
        "listen": COMPOSE_LISTEN,
        **_roster_values(services, {s.name: [f"{s.name}:{COMPOSE_PORT}"] for s in services}, True, static_dir),
    }


def values_for_local(services: list[Service], listen: str, run_dir: Path, upstreams: dict[str, list[str]],
                     static_dir: Path, worker_processes: str = "auto") -> dict[str, str]:
    """`upstreams`: each service's loopback instances (every service in the roster needs one)."""
    missing = [s.name for s in services if not upstreams.get(s.name)]
    if missing:
        raise ValueError(f"no instance address for {missing}")
    run_dir = run_dir.resolve()
    return {
        "worker_processes": f"worker_processes {worker_processes};",
        "pid_file": str(run_dir / "nginx.pid"),
        "error_log": str(run_dir / "error.log"),
        "access_log": f"{run_dir / 'access.log'} json_lines",
        "temp_dir": str(run_dir / "temp"),
        "static_dir": str(static_dir.resolve()),
        "resolver": "",
        "listen": listen,
        **_roster_values(services, upstreams, False, static_dir),
    }


def render(values: dict[str, str], template: str) -> str:
    placeholders = set(re.findall(r"\{\{ (\w+) \}\}", template))
    if placeholders != set(values):
        raise ValueError(f"template placeholders {sorted(placeholders)} != values {sorted(values)}")
    return re.sub(r"\{\{ (\w+) \}\}", lambda m: values[m.group(1)], template)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["compose", "local"])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository (or its copy in a build)")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--run-dir", type=Path, default=Path(".run/nginx"))
    parser.add_argument("--upstream", action="append", default=[], metavar="SERVICE=ADDRESS")
    args = parser.parse_args(argv)
    services = load(args.repo / "services")
    if args.mode == "compose":
        values = values_for_compose(services, args.repo / STATIC)
    else:
        upstreams: dict[str, list[str]] = {}
        for item in args.upstream:
            name, _, address = item.partition("=")
            upstreams.setdefault(name, []).append(address)
        values = values_for_local(services, args.listen, args.run_dir, upstreams, args.repo / STATIC)
    sys.stdout.write(render(values, (args.repo / TEMPLATE).read_text()))


if __name__ == "__main__":
    main()
