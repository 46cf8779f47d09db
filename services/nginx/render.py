"""Render nginx.conf from nginx.conf.template for one of the two modes.

    python render.py compose > nginx.conf             (the nginx image build does this)
    python render.py local --listen 127.0.0.1:8080 --run-dir .run/nginx \
        --text-api 127.0.0.1:8101 --text-api 127.0.0.1:8102 --vision-api 127.0.0.1:8201

Only the placeholders differ between modes; routing, limits, timeouts and retries are the
template's, so compose and local mode cannot drift. Standard library only: it runs in the
image's build stage and in local mode alike.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
STATIC_DIR = Path(__file__).with_name("static")  # the demo page, the API page, openapi.json
# In compose: the services' names on the compose network, and the port their gunicorn binds.
COMPOSE_UPSTREAMS = {"text_api": "text-api:8000", "vision_api": "vision-api:8000"}
COMPOSE_LISTEN = "8080"  # the unprivileged nginx image cannot bind 80


def _servers(addresses: list[str], resolve: bool) -> str:
    # In local mode a replica that refuses connections is skipped for 2 s, then tried again.
    suffix = " resolve" if resolve else " max_fails=1 fail_timeout=2s"
    return "\n".join(f"        server {address}{suffix};" for address in addresses)


def values_for_compose() -> dict[str, str]:
    return {
        "worker_processes": "# (set by start-nginx.sh)",
        "pid_file": "/tmp/nginx.pid",
        "error_log": "/dev/stderr",
        "access_log": "/dev/stdout json_lines",
        # nginx creates each temp folder but not its parents: /tmp exists in every image.
        "temp_dir": "/tmp",
        "static_dir": "/usr/share/nginx/html",
        # Docker's embedded DNS; re-resolved every 5 s so scaled replicas join and leave.
        "resolver": "    resolver 127.0.0.11 valid=5s ipv6=off;\n    resolver_timeout 2s;\n",
        "listen": COMPOSE_LISTEN,
        "text_api_servers": _servers([COMPOSE_UPSTREAMS["text_api"]], resolve=True),
        "vision_api_servers": _servers([COMPOSE_UPSTREAMS["vision_api"]], resolve=True),
    }


def values_for_local(listen: str, run_dir: Path, text_api: list[str], vision_api: list[str],
                     worker_processes: str = "auto", static_dir: Path = STATIC_DIR) -> dict[str, str]:
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
        "text_api_servers": _servers(text_api, resolve=False),
        "vision_api_servers": _servers(vision_api, resolve=False),
    }


def render(values: dict[str, str], template: str | None = None) -> str:
    text = TEMPLATE.read_text() if template is None else template
    placeholders = set(re.findall(r"\{\{ (\w+) \}\}", text))
    if placeholders != set(values):
        raise ValueError(f"template placeholders {sorted(placeholders)} != values {sorted(values)}")
    return re.sub(r"\{\{ (\w+) \}\}", lambda m: values[m.group(1)], text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["compose", "local"])
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--run-dir", type=Path, default=Path(".run/nginx"))
    parser.add_argument("--text-api", action="append", default=[])
    parser.add_argument("--vision-api", action="append", default=[])
    args = parser.parse_args(argv)
    if args.mode == "compose":
        values = values_for_compose()
    else:
        if not args.text_api or not args.vision_api:
            parser.error("local mode needs at least one --text-api and one --vision-api address")
        values = values_for_local(args.listen, args.run_dir, args.text_api, args.vision_api)
    sys.stdout.write(render(values))


if __name__ == "__main__":
    main()
