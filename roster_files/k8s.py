"""The Kubernetes manifests the roster determines: each service's kustomization, the base's list of
them, the Ingresses and the model server's NetworkPolicy."""

from __future__ import annotations

from pathlib import Path
from string import Template

from roster_files.common import HEADER, scalar
from service_roster import Service

BASE = Path("k8s") / "base"
# A service's k8s-only settings that the roster does not hold (JSON patch operations on its
# Deployment), hand-written beside its generated kustomization.yaml, which takes it in if it exists.
OWN_PATCH = "deployment-patch.yaml"


def _prefix(service: Service) -> str:
    """k8s/base/api-service names its objects `api`; a service takes them with a name prefix."""
    if not service.name.endswith("-api"):
        raise ValueError(f"{service.name}: on Kubernetes a service's objects are <prefix>-api "
                         "(k8s/base/api-service with a namePrefix): name it <something>-api")
    return service.name.removesuffix("api")


K8S_SERVICE = Template(HEADER + """\
# $name (services/$name/service.toml): ../api-service's objects, named $name,
# with its image and model (and the settings in deployment-patch.yaml, where it has one).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: $prefix
resources:
  - ../api-service
labels:
  - pairs:
      app.kubernetes.io/name: $name
    includeSelectors: true
    includeTemplates: true
images:
  - name: model-serving/api
    newName: model-serving/$name
patches:
  - target: {kind: Deployment, name: api}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/name, value: $name}
      - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: MODEL_NAME, value: $model}}
""")
K8S_SERVICE_OWN_PATCH = f"""\
  # Its settings the roster does not hold (hand-written).
  - target: {{kind: Deployment, name: api}}
    path: {OWN_PATCH}
"""


def service_kustomization(service: Service, repo: Path) -> str:
    text = K8S_SERVICE.substitute(name=scalar(service.name), prefix=scalar(_prefix(service)),
                                  model=scalar(service.model))
    own_patch = (repo / BASE / service.name / OWN_PATCH).exists()
    return text + (K8S_SERVICE_OWN_PATCH if own_patch else "")


BASE_KUSTOMIZATION = Template(HEADER + """\
# The compose topology on Kubernetes: TF Serving on a model repository volume (reachable only from
# the API pods: networkpolicy.yaml), each API service (a folder here) with autoscaling, and
# ingress-nginx routing their routes as services/nginx does (ingress.yaml).
#   kubectl apply -k k8s/base            (CPU)
#   kubectl apply -k k8s/overlays/gpu    (TF Serving on an NVIDIA GPU)
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: model-serving
labels:
  - pairs:
      app.kubernetes.io/part-of: model-serving
resources:
  - namespace.yaml
  - model-repository.yaml
  - tfserving.yaml
  - networkpolicy.yaml
$folders
  - ingress.yaml
# The API images are built from services/api.Dockerfile (--build-arg SERVICE=<name>) and pushed to
# your registry; point these at it in an overlay of your own, since this file is generated
# (kustomize edit set image model-serving/<name>=registry.example.com/<name>:1.0.0 there).
images:
$images
""")


def base_kustomization(services: list[Service], repo: Path) -> str:
    return BASE_KUSTOMIZATION.substitute(
        folders="\n".join(f"  - {scalar(s.name)}" for s in services),
        images="\n".join(f"  - name: {scalar('model-serving/' + s.name)}\n    newTag: \"1.0.0\"" for s in services))


K8S_INGRESSES = HEADER + """\
# ingress-nginx with services/nginx's routes, limits and retries: an Ingress per service, each
# with its service's body_limit (ingress-nginx takes it per Ingress).
"""
K8S_INGRESS = Template("""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: $name
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: $body_limit
    nginx.ingress.kubernetes.io/proxy-read-timeout: "30"
    nginx.ingress.kubernetes.io/proxy-next-upstream: error timeout
    nginx.ingress.kubernetes.io/proxy-next-upstream-tries: "2"
    nginx.ingress.kubernetes.io/load-balance: ewma
spec:
  ingressClassName: nginx
  rules:
    - http:
        paths:
$paths""")
K8S_INGRESS_PATH = Template("""\
          - path: $route
            pathType: Prefix
            backend:
              service: {name: $name, port: {name: http}}
""")


def ingress(services: list[Service], repo: Path) -> str:
    """One Ingress per service: ingress-nginx takes the body limit per Ingress."""
    ingresses = [K8S_INGRESS.substitute(
        name=scalar(s.name), body_limit=scalar(s.body_limit),
        paths="".join(K8S_INGRESS_PATH.substitute(route=scalar(r), name=scalar(s.name)) for r in s.routes))
        for s in services]
    return K8S_INGRESSES + "---\n".join(ingresses)


K8S_NETWORK_POLICY = Template(HEADER + """\
# Only the API pods reach the model server (issue 20): its gRPC ModelService can replace or unload
# every model (HandleReloadConfigRequest), and TF Serving accepts that from anyone who reaches the
# port. Probes are unaffected (the readiness probe runs inside the pod, and traffic from the pod's
# own node, kubelet's, is always admitted). A Prometheus that scrapes the tfserving pod's
# annotations (port 8501) needs a rule of its own here. Needs a network plugin that enforces
# NetworkPolicy (Calico, Cilium, ...).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: tfserving
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: tfserving
  policyTypes: [Ingress]
  ingress:
    - from:
        # The API services' pods (k8s/base/<service>/ labels them app.kubernetes.io/name: <service>).
        - podSelector:
            matchExpressions:
              - {key: app.kubernetes.io/name, operator: In, values: [$names]}
      ports:
        - {protocol: TCP, port: 8500}
        - {protocol: TCP, port: 8501}
""")


def network_policy(services: list[Service], repo: Path) -> str:
    return K8S_NETWORK_POLICY.substitute(names=", ".join(scalar(s.name) for s in services))
