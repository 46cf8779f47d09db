"""The nginx template rendered for both modes: valid for nginx, clean for gixy, and saying what
the system relies on (routes, limits, retries, keepalive, request ids)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import crossplane
import pytest

from service_roster import nginx_conf
from tests.conftest import API_NAMES, REPO_ROOT, ROSTER

TEMPLATE = (REPO_ROOT / nginx_conf.TEMPLATE).read_text()

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Two loopback instances of every service in the roster, in its order.
UPSTREAMS = {service.name: [f"127.0.0.1:{18001 + 100 * i + k}" for k in range(2)] for i, service in enumerate(ROSTER)}


def render_local(tmp_path: Path) -> Path:
    values = nginx_conf.values_for_local(ROSTER, "127.0.0.1:18080", tmp_path, UPSTREAMS, REPO_ROOT / nginx_conf.STATIC)
    (tmp_path / "temp").mkdir(exist_ok=True)
    path = tmp_path / "local.conf"
    path.write_text(nginx_conf.render(values, TEMPLATE))
    return path


def render_compose(tmp_path: Path) -> Path:
    path = tmp_path / "compose.conf"
    path.write_text(nginx_conf.render(nginx_conf.values_for_compose(ROSTER, REPO_ROOT / nginx_conf.STATIC),
                                      TEMPLATE))
    return path


def nginx_test(config: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=30)


def test_local_render_passes_nginx_t(tmp_path):
    result = nginx_test(render_local(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_compose_render_passes_nginx_t_apart_from_what_needs_docker(tmp_path):
    """Debian's nginx 1.22 lacks `server ... resolve` (1.27.3+) and cannot resolve compose's
    service names; with exactly those two things swapped for loopback, the rest must pass."""
    text = render_compose(tmp_path).read_text()
    assert "resolver 127.0.0.11" in text
    for name in API_NAMES:
        assert f"server {name}:8000 resolve max_fails=1 fail_timeout=2s;" in text
        text = re.sub(rf"server {name}:8000 resolve( .*);", r"server 127.0.0.1:8000\1;", text)
    text = re.sub(r"^\s*resolver(_timeout)? .*;$", "", text, flags=re.MULTILINE)
    # The image's /tmp becomes tmp_path; nothing is created for nginx (it must create what it needs).
    text = text.replace(" /tmp/", f" {tmp_path}/")
    text = text.replace("error_log /dev/stderr", f"error_log {tmp_path / 'error.log'}")
    adapted = tmp_path / "adapted.conf"
    adapted.write_text(text)
    result = nginx_test(adapted, tmp_path)
    assert result.returncode == 0, result.stderr


def test_compose_render_parses_as_written(tmp_path):
    parsed = crossplane.parse(str(render_compose(tmp_path)), single=True, check_ctx=True, check_args=True)
    assert parsed["status"] == "ok", parsed["errors"]


@pytest.mark.parametrize("mode", ["local", "compose"])
def test_gixy_finds_nothing(tmp_path, mode):
    config = render_local(tmp_path) if mode == "local" else render_compose(tmp_path)
    result = subprocess.run([str(Path(sys.executable).with_name("gixy")), "-f", "json", str(config)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    # gixy follows a map only when it has one value: a bounded service's `$<group>_group` maps to
    # two upstream groups of this file (plain and bounded), which it takes for a hostname without a
    # resolver. That finding, and only for those variables, is not one.
    grouped = [f"proxy_pass http://${s.upstream}_group;" for s in ROSTER if s.max_in_flight]
    findings = [f for f in findings if not (f["plugin"] == "missing_resolver" and grouped
                                            and all(line in f["config"] for line in grouped))]
    assert findings == [], findings


def directives(config: Path) -> dict[str, list[list[str]]]:
    """Every directive's argument lists, wherever it appears."""
    found: dict[str, list[list[str]]] = {}

    def walk(block: list[dict]) -> None:
        for item in block:
            found.setdefault(item["directive"], []).append(item["args"])
            walk(item.get("block", []))

    walk(crossplane.parse(str(config), single=True)["config"][0]["parsed"])
    return found


def test_what_the_system_relies_on_is_configured(tmp_path):
    found = directives(render_local(tmp_path))
    assert ["off"] in found["server_tokens"]
    groups = 2 * len(ROSTER) + sum(1 for service in ROSTER if service.max_in_flight)  # each, its _retry twin, bounded
    assert len(found["least_conn"]) == len(found["upstream"]) == groups, "every upstream balances by least connections"
    assert found["proxy_next_upstream"] == [["error", "timeout"]], "no replay of a POST an instance took"
    assert found["proxy_next_upstream_tries"] == [["0"]], "every instance, for a request none took"
    assert ["1.1"] in found["proxy_http_version"] and ["Connection", ""] in found["proxy_set_header"]
    assert ["X-Request-ID", "$req_id"] in found["proxy_set_header"]
    assert {a[0] for a in found["client_max_body_size"]} == {service.body_limit for service in ROSTER}
    assert ["on"] in found["proxy_request_buffering"]
    instances = []
    for service in ROSTER:
        plain = [[address, "max_fails=1", "fail_timeout=2s"] for address in UPSTREAMS[service.name]]
        again = [[address, "max_fails=0"] for address in UPSTREAMS[service.name]]
        instances += plain + again + [[*server, f"max_conns={service.max_in_flight}"] for server in plain
                                      if service.max_in_flight]
    assert found["server"][:len(instances)] == instances


def test_template_and_values_cannot_drift():
    with pytest.raises(ValueError):
        nginx_conf.render({"listen": "80"}, TEMPLATE)
