"""k8s/: the base and the GPU overlay build with `kubectl kustomize` (what `kubectl apply -k`
runs), every object validates against the Kubernetes API schema, and the topology matches compose.
What the roster determines (each service's kustomization, the Ingresses, the network policy's
list) is written by `./stack generate` (tests/roster_files/test_generated_files.py); here it builds, with
a third service too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from roster_files import generated_files
from tests.conftest import API_NAMES, REPO_ROOT, ROSTER, required_in_ci
from tests.roster_files.test_generated_files import THIRD, copy_for_generating

K8S = REPO_ROOT / "k8s"


def kustomize(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`: Debian's kubectl (trixie on, kustomize v5), which
    scripts/bootstrap.sh --for-tests installs; without it these tests skip, except under CI."""
    if shutil.which("kubectl") is None:
        required_in_ci("the k8s manifest tests", "no kubectl", module_level=True)
    built = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


BASE, GPU = kustomize(K8S / "base"), kustomize(K8S / "overlays" / "gpu")
INGRESS_NGINX = kustomize(K8S / "ingress-nginx")
COMPOSE = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
APIS = API_NAMES


def find(documents: list[dict], kind: str, name: str) -> dict:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(documents: list[dict], name: str) -> dict:
    return find(documents, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("documents", [BASE, GPU, INGRESS_NGINX], ids=["base", "gpu", "ingress-nginx"])
def test_every_object_validates_against_the_kubernetes_schema(documents):
    version = latest_version()
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
    if documents is not INGRESS_NGINX:
        assert {d["kind"] for d in documents} >= {"Namespace", "PersistentVolumeClaim", "Deployment", "Service",
                                                   "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"}


def test_the_ingress_controller_takes_the_header_sizes_services_nginx_takes():
    """`GET /cv_sod?img=<base64>` needs 64 KB request lines; the controller's default is 8 KB."""
    template = (REPO_ROOT / "services" / "nginx" / "nginx.conf.template").read_text()
    [nginx_buffers] = re.findall(r"^\s*large_client_header_buffers (.+);", template, re.MULTILINE)
    config = find(INGRESS_NGINX, "ConfigMap", "ingress-nginx-controller")
    assert config["metadata"]["namespace"] == "ingress-nginx"
    assert config["data"]["large-client-header-buffers"] == nginx_buffers


def test_tf_serving_runs_compose_flags_on_the_read_only_repository():
    tfserving = container(BASE, "tfserving")
    assert tfserving["args"] == COMPOSE["tfserving"]["command"]
    assert tfserving["image"] == COMPOSE["tfserving"]["image"]
    assert tfserving["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    volume = find(BASE, "Deployment", "tfserving")["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"] == {"claimName": "model-repository", "readOnly": True}
    compose_check = COMPOSE["tfserving"]["healthcheck"]["test"][1:]
    assert tfserving["readinessProbe"]["exec"]["command"] == [part.replace("$$", "$") for part in compose_check]


@pytest.mark.parametrize("api", APIS)
def test_api_services_probe_health_scale_and_run_as_compose_does(api):
    deployment = find(BASE, "Deployment", api)
    spec = container(BASE, api)
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in spec["env"]}
    for name, value in COMPOSE[api]["environment"].items():
        assert env[name] == str(value), name
    [service] = [s for s in ROSTER if s.name == api]
    assert env["MODEL_NAME"] == service.model and spec["name"] == api
    assert spec["image"] == f"model-serving/{api}:1.0.0"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    hpa = find(BASE, "HorizontalPodAutoscaler", api)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": api}
    assert hpa["spec"]["minReplicas"] >= 2 and "replicas" not in deployment["spec"]
    service = find(BASE, "Service", api)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def api_services(documents: list[dict]) -> list[str]:
    return sorted(d["metadata"]["name"] for d in documents
                  if d["kind"] == "Deployment" and d["metadata"]["name"] != "tfserving")


def ingress_backends(documents: list[dict]) -> dict[str, str]:
    """Each Ingress path's backend, checked to be a Service the build makes."""
    backends = {}
    for ingress in (d for d in documents if d["kind"] == "Ingress"):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for path in ingress["spec"]["rules"][0]["http"]["paths"]:
            backends[path["path"]] = path["backend"]["service"]["name"]
            assert find(documents, "Service", backends[path["path"]])
    return backends


def test_the_base_deploys_every_service_and_routes_its_routes_to_it():
    assert api_services(BASE) == sorted(API_NAMES)
    assert ingress_backends(BASE) == {route: service.name for service in ROSTER for route in service.routes}


def test_a_third_service_as_generated_builds_validates_and_is_routed(tmp_path):
    repo = copy_for_generating(tmp_path, THIRD)
    for path, text in generated_files(repo).items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    built = kustomize(repo / "k8s" / "base")
    for document in built:
        kubernetes_validate.validate(document, latest_version(), strict=True)
    assert api_services(built) == sorted([*API_NAMES, THIRD.name])
    assert {route: backend for route, backend in ingress_backends(built).items() if backend == THIRD.name} \
        == dict.fromkeys(THIRD.routes, THIRD.name)
    assert {e["name"]: e["value"] for e in container(built, THIRD.name)["env"]}["MODEL_NAME"] == THIRD.model
    policy = find(built, "NetworkPolicy", "tfserving")["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert THIRD.name in policy["matchExpressions"][0]["values"]


def test_everything_lands_in_the_namespace():
    namespaced = [d for d in BASE if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"model-serving"}


def test_gpu_overlay_changes_only_tf_serving_as_compose_gpu_does():
    compose_gpu = yaml.safe_load((REPO_ROOT / "compose.gpu.yaml").read_text())["services"]["tfserving"]
    tfserving = container(GPU, "tfserving")
    assert tfserving["image"] == compose_gpu["image"]
    assert tfserving["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in tfserving["env"]} == compose_gpu["environment"]
    unchanged = [d for d in BASE if not (d["kind"] == "Deployment" and d["metadata"]["name"] == "tfserving")]
    assert all(d in GPU for d in unchanged)


def test_the_schema_check_catches_a_typo():
    broken = yaml.safe_load(yaml.safe_dump(find(BASE, "Deployment", APIS[0])))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_only_the_api_pods_reach_the_model_server():
    """Its ModelService can unload every model (HandleReloadConfigRequest), and TF Serving takes that
    from anyone who reaches the port (issue 20)."""
    policy = find(BASE, "NetworkPolicy", "tfserving")
    pods = find(BASE, "Deployment", "tfserving")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pods.items(), "the policy selects the model server's pods"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert set(source) == {"podSelector"}, "pods of this namespace only, no namespaceSelector or ipBlock"
    [expression] = source["podSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("app.kubernetes.io/name", "In")
    api_pod_names = {find(BASE, "Deployment", api)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                     for api in APIS}
    assert set(expression["values"]) == api_pod_names, "every API service, and nothing else"
    service_ports = {p["port"] for p in find(BASE, "Service", "tfserving")["spec"]["ports"]}
    assert {p["port"] for p in rule["ports"]} == service_ports
    assert all(p["protocol"] == "TCP" for p in rule["ports"])
    assert find(GPU, "NetworkPolicy", "tfserving") == policy, "the GPU overlay keeps it"


def test_api_pods_see_every_model_server_pod_and_balance_their_calls():
    """gRPC keeps one connection per address: behind a ClusterIP (one virtual address) each API pod
    would send every call to the one pod kube-proxy picked for its connection. A headless Service
    answers DNS with every ready pod, and the API's address asks for all of them (dns:///)."""
    assert find(BASE, "Service", "tfserving")["spec"]["clusterIP"] == "None"
    assert find(BASE, "Deployment", "tfserving")["spec"]["replicas"] >= 2
    for api in APIS:
        env = {e["name"]: e.get("value") for e in container(BASE, api)["env"]}
        assert env["TFSERVING_GRPC_ADDRESS"] == "dns:///tfserving:8500" == COMPOSE[api]["environment"][
            "TFSERVING_GRPC_ADDRESS"]
