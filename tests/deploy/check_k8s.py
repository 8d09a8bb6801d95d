#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/k8s.

Every overlay (and the TLS passthrough examples) is rendered with `kubectl kustomize`, and every
rendered object is checked:

- against the Kubernetes OpenAPI schemas shipped in the `kubernetes-validate` package, strictly
  (unknown fields are errors), for the oldest and the newest Kubernetes version we claim;
- custom resources (KServe, Gateway API), for which no schema ships, against a minimal structural
  check of our own: apiVersion, kind, name and the fields their controllers require;
- against our own rules: every container has CPU and memory requests and limits, runs as non-root
  with no privilege escalation, a read-only root filesystem, every capability dropped and the
  RuntimeDefault seccomp profile; the inference server runs under the overlay's Kata runtime class
  with the overlay's TEE (`coco` under a Kata TEE runtime class, with the kata agent told to serve
  the attestation agent's evidence endpoint), has HTTPS liveness and readiness probes on /v2/health/live and
  /v2/health/ready and an autoscaler; and the NetworkPolicies, evaluated as Kubernetes does, let
  only inference servers reach the key broker's transfer instance, only operators its admin
  instance, and only the key broker its database.

`check_objects(objects, expect)` is the check: it returns the problems found in a list of rendered
objects, so tests can feed it modified copies. Nothing here talks to a cluster.

Run: .venv/bin/python tests/deploy/check_k8s.py (KUBECTL=path picks another kubectl).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"

# The Kubernetes versions every built-in object must validate against: the oldest that
# kubernetes-validate ships a schema for, and its newest.
SCHEMA_VERSIONS = ("1.25", "1.37")

SERVER_IMAGE = "localhost/adyton-server"
KATA_KERNEL_PARAMS = "io.katacontainers.config.hypervisor.kernel_params"
REST_API_PARAMS = ("agent.guest_components_rest_api=attestation", "agent.guest_components_rest_api=all")
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"


@dataclass(frozen=True)
class Expect:
    """What one rendered directory must contain."""

    # The inference server's runtime class and the TEE it is started with (`--tee`); None for a
    # directory without a server (the examples).
    runtime_class: str | None
    tee: str | None
    # The server comes as a KServe ServingRuntime and InferenceService, not a Deployment.
    kserve: bool = False
    # The key broker, its database, the registry and their NetworkPolicies are there.
    stack: bool = True


TARGETS: dict[str, Expect] = {
    # A Kata TEE guest gives the pod no configfs-tsm: evidence comes from the attestation agent.
    "overlays/coco-tdx": Expect("kata-qemu-tdx", "coco"),
    "overlays/coco-snp": Expect("kata-qemu-snp", "coco"),
    # No hardware TEE: the agent's evidence there is its unsigned sample, which Adyton refuses.
    "overlays/coco-dev": Expect("kata-qemu-coco-dev", "sim"),
    "overlays/kserve": Expect("kata-qemu-tdx", "coco", kserve=True),
    "examples/tls-passthrough": Expect(None, None, stack=False),
}


# ---------------------------------------------------------------------------------------------
# Rendering


def kubectl() -> str:
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not path:
        raise RuntimeError("kubectl is missing: scripts/setup installs Debian's kubernetes-client")
    return path


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize DIRECTORY` renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


# ---------------------------------------------------------------------------------------------
# Schemas


def name_of(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def _require(obj: dict, path: str, problems: list[str]) -> object:
    """The value at a dotted path, or None with a problem noted."""
    value: object = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            problems.append(f"{name_of(obj)}: `{path}` is missing")
            return None
        value = value[part]
    return value


def _check_serving_runtime(obj: dict, problems: list[str]) -> None:
    formats = _require(obj, "spec.supportedModelFormats", problems)
    if formats is not None and not (
        isinstance(formats, list) and formats and all(isinstance(f, dict) and f.get("name") for f in formats)
    ):
        problems.append(f"{name_of(obj)}: spec.supportedModelFormats needs entries with a name")
    containers = _require(obj, "spec.containers", problems)
    if containers is not None and not (
        isinstance(containers, list)
        and containers
        and all(isinstance(c, dict) and c.get("name") and c.get("image") for c in containers)
    ):
        problems.append(f"{name_of(obj)}: spec.containers needs entries with a name and an image")


def _check_inference_service(obj: dict, problems: list[str]) -> None:
    predictor = _require(obj, "spec.predictor", problems)
    if isinstance(predictor, dict):
        model = predictor.get("model")
        if not isinstance(model, dict) or not (model.get("modelFormat") or {}).get("name"):
            problems.append(f"{name_of(obj)}: spec.predictor.model.modelFormat.name is missing")


def _check_gateway(obj: dict, problems: list[str]) -> None:
    _require(obj, "spec.gatewayClassName", problems)
    listeners = _require(obj, "spec.listeners", problems)
    if listeners is not None and not (
        isinstance(listeners, list)
        and listeners
        and all(isinstance(l, dict) and l.get("name") and l.get("port") and l.get("protocol") for l in listeners)
    ):
        problems.append(f"{name_of(obj)}: every listener needs a name, a port and a protocol")


def _check_tls_route(obj: dict, problems: list[str]) -> None:
    _require(obj, "spec.parentRefs", problems)
    rules = _require(obj, "spec.rules", problems)
    if rules is not None and not (
        isinstance(rules, list) and rules and all(isinstance(r, dict) and r.get("backendRefs") for r in rules)
    ):
        problems.append(f"{name_of(obj)}: every rule needs backendRefs")


# Custom resources: no schema ships for them, so a minimal structural check of our own.
CUSTOM_RESOURCES = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): _check_serving_runtime,
    ("serving.kserve.io/v1beta1", "InferenceService"): _check_inference_service,
    ("gateway.networking.k8s.io/v1", "Gateway"): _check_gateway,
    ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"): _check_tls_route,
}


@functools.lru_cache(maxsize=None)
def _validator(version: str, api_version: str, kind: str):
    """A strict validator for one kind, from the schemas that kubernetes-validate ships, found as
    `kubernetes_validate.validate` finds them; cached, since loading the definitions is most of
    the cost. None when no schema exists for the kind."""
    import importlib.resources
    import json

    import jsonschema
    from referencing import Registry, Resource

    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_file = root / f"{kind.lower()}-{group}.json"
    if not schema_file.is_file():
        return None
    schema = json.loads(schema_file.read_text())
    definitions = json.loads((root / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_problems(objects: list[dict]) -> list[str]:
    problems: list[str] = []
    for obj in objects:
        if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
            problems.append(f"an object without apiVersion or kind: {str(obj)[:80]}")
            continue
        if not (obj.get("metadata") or {}).get("name"):
            problems.append(f"{obj['kind']}: metadata.name is missing")
            continue
        custom = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
        if custom is not None:
            custom(obj, problems)
            continue
        for version in SCHEMA_VERSIONS:
            validator = _validator(version, obj["apiVersion"], obj["kind"])
            if validator is None:
                problems.append(
                    f"{name_of(obj)}: no schema for kind {obj['kind']} of {obj['apiVersion']} "
                    f"in Kubernetes {version}"
                )
                continue
            error = jsonschema_best_error(validator, obj)
            if error is not None:
                where = ".".join(str(p) for p in error.path)
                problems.append(
                    f"{name_of(obj)}: not valid for Kubernetes {version} at `{where}`: {error.message}"
                )
    return problems


def jsonschema_best_error(validator, obj: dict):
    import jsonschema.exceptions

    return jsonschema.exceptions.best_match(validator.iter_errors(obj))


# ---------------------------------------------------------------------------------------------
# Pods and containers


@dataclass
class Pod:
    """A pod template, as the cluster would run it."""

    owner: str
    labels: dict
    spec: dict
    # The InferenceService's predictor, for a KServe pod.
    component: str = ""
    extra: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)


POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def pods(objects: list[dict]) -> list[Pod]:
    found: list[Pod] = []
    runtimes = {
        o["metadata"]["name"]: o for o in objects if o.get("kind") == "ServingRuntime"
    }
    for obj in objects:
        kind = obj.get("kind")
        if kind in POD_OWNERS:
            template = (obj.get("spec") or {}).get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            found.append(Pod(name_of(obj), dict(labels), template.get("spec") or {},
                             annotations=dict(annotations)))
        elif kind == "InferenceService":
            # KServe builds the predictor's pod from the InferenceService's predictor (pod-level
            # fields, labels) and its ServingRuntime's containers and volumes.
            predictor = (obj.get("spec") or {}).get("predictor") or {}
            model = predictor.get("model") or {}
            runtime = runtimes.get(model.get("runtime", ""))
            spec = {k: v for k, v in predictor.items() if k not in ("model", "labels", "annotations",
                                                                   "minReplicas", "maxReplicas",
                                                                   "scaleMetric", "scaleTarget")}
            spec["containers"] = copy.deepcopy((runtime or {}).get("spec", {}).get("containers", []))
            spec["volumes"] = copy.deepcopy((runtime or {}).get("spec", {}).get("volumes", []))
            labels = dict(predictor.get("labels") or {})
            labels["serving.kserve.io/inferenceservice"] = obj["metadata"]["name"]
            labels["component"] = "predictor"
            found.append(Pod(name_of(obj), labels, spec, component="predictor",
                             extra={"runtime_found": runtime is not None, "predictor": predictor},
                             annotations=dict(predictor.get("annotations") or {})))
    return found


def _effective(container: dict, pod_spec: dict, key: str) -> object:
    """A security setting as it applies: the container's, else the pod's."""
    own = (container.get("securityContext") or {}).get(key)
    if own is not None:
        return own
    return (pod_spec.get("securityContext") or {}).get(key)


def container_problems(pod: Pod) -> list[str]:
    problems: list[str] = []
    spec = pod.spec
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"{pod.owner}: {host} is set")
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    if not containers:
        problems.append(f"{pod.owner}: no containers")
    for container in containers:
        where = f"{pod.owner} container {container.get('name', '?')}"
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(kind) or {}).get(resource):
                    problems.append(f"{where}: no {resource} in resources.{kind}")
        if _effective(container, spec, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        user = _effective(container, spec, "runAsUser")
        if user is None or user == 0:
            problems.append(f"{where}: runs as root (runAsUser {user})")
        group = _effective(container, spec, "runAsGroup")
        if group == 0:
            problems.append(f"{where}: runs with group root (runAsGroup 0)")
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: the root filesystem is not read-only")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if capabilities.get("add"):
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        seccomp = _effective(container, spec, "seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: the seccomp profile is not RuntimeDefault")
    return problems


# ---------------------------------------------------------------------------------------------
# The inference server


def _probe_problems(where: str, probe: object, path: str, which: str) -> list[str]:
    if not isinstance(probe, dict):
        return [f"{where}: no {which} probe"]
    get = probe.get("httpGet") or {}
    problems = []
    if get.get("path") != path:
        problems.append(f"{where}: the {which} probe is not an HTTP GET of {path}")
    if get.get("scheme") != "HTTPS":
        problems.append(f"{where}: the {which} probe is not over HTTPS (the server speaks only TLS)")
    return problems


def server_problems(objects: list[dict], expect: Expect) -> list[str]:
    servers = [
        p for p in pods(objects)
        if any((c.get("image") or "").startswith(SERVER_IMAGE) for c in p.spec.get("containers") or [])
    ]
    if expect.runtime_class is None:
        return [f"{p.owner}: an inference server where none is expected" for p in servers]
    if len(servers) != 1:
        return [f"expected one inference server pod template, found {len(servers)}"]
    server = servers[0]
    problems: list[str] = []
    if expect.kserve and not server.extra.get("runtime_found"):
        problems.append(f"{server.owner}: its ServingRuntime is not in the rendered objects")
    if server.spec.get("runtimeClassName") != expect.runtime_class:
        problems.append(
            f"{server.owner}: runtimeClassName is {server.spec.get('runtimeClassName')!r}, "
            f"expected {expect.runtime_class!r}"
        )
    if server.spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{server.owner}: a service account token is mounted into the TEE")
    # A Secret passes through the host (API server, etcd, kubelet): nothing secret may reach the
    # TEE that way, whether as a volume, a projected source or an environment variable.
    for volume in server.spec.get("volumes") or []:
        sources = [volume] + list((volume.get("projected") or {}).get("sources") or [])
        if any("secret" in source for source in sources):
            problems.append(f"{server.owner}: the Secret volume {volume.get('name')!r} is mounted into the TEE")
    for container in server.spec.get("containers") or []:
        for env in container.get("env") or []:
            if "secretKeyRef" in (env.get("valueFrom") or {}):
                problems.append(f"{server.owner}: the environment variable {env.get('name')!r} comes from a Secret")
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                problems.append(f"{server.owner}: its environment comes from a Secret")
    if server.labels.get("adyton.dev/role") != "inference-server":
        problems.append(f"{server.owner}: the pods lack the label adyton.dev/role=inference-server")
    container = next(c for c in server.spec["containers"] if (c.get("image") or "").startswith(SERVER_IMAGE))
    where = f"{server.owner} container {container.get('name')}"
    args = list(container.get("command") or []) + list(container.get("args") or [])
    tees = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--tee"]
    if tees != [expect.tee]:
        problems.append(f"{where}: started with --tee {tees}, expected [{expect.tee!r}]")
    if expect.tee == "coco":
        # The kata agent serves the attestation agent's evidence endpoint only when told so.
        params = server.annotations.get(KATA_KERNEL_PARAMS, "").split()
        if not any(p in params for p in REST_API_PARAMS):
            problems.append(
                f"{server.owner}: --tee coco, but the pod's {KATA_KERNEL_PARAMS} annotation does not "
                f"enable the attestation agent's REST API ({REST_API_PARAMS[0]})"
            )
    problems += _probe_problems(where, container.get("livenessProbe"), LIVE_PATH, "liveness")
    problems += _probe_problems(where, container.get("readinessProbe"), READY_PATH, "readiness")
    if expect.kserve:
        predictor = server.extra["predictor"]
        annotations = next(
            o for o in objects if o.get("kind") == "InferenceService"
        )["metadata"].get("annotations") or {}
        if annotations.get("serving.kserve.io/deploymentMode") != "RawDeployment":
            problems.append(f"{server.owner}: not in RawDeployment mode (Knative's proxy cannot carry the server's TLS)")
        if annotations.get("serving.kserve.io/autoscalerClass") != "hpa" or not predictor.get("maxReplicas"):
            problems.append(f"{server.owner}: no HorizontalPodAutoscaler (autoscalerClass hpa and maxReplicas)")
    else:
        deployment = server.owner.split("/", 1)[1]
        hpas = [
            o for o in objects
            if o.get("kind") == "HorizontalPodAutoscaler"
            and (o.get("spec") or {}).get("scaleTargetRef", {}).get("name") == deployment
            and (o.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == "Deployment"
        ]
        if len(hpas) != 1:
            problems.append(f"{server.owner}: {len(hpas)} HorizontalPodAutoscalers target it, expected 1")
    return problems


# ---------------------------------------------------------------------------------------------
# NetworkPolicies, evaluated as the cluster does (ingress only)


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector against labels; an empty selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """A connecting pod: its labels and its namespace's labels; None for a source outside the
    cluster."""

    description: str
    labels: dict | None
    namespace_labels: dict | None
    same_namespace: bool


def _peer_matches(rule_peer: dict, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        # We write none; an ipBlock admits sources outside the cluster, never a specific pod.
        return peer.labels is None
    if peer.labels is None:
        return False
    if "namespaceSelector" in rule_peer:
        if not selector_matches(rule_peer["namespaceSelector"], peer.namespace_labels or {}):
            return False
    elif not peer.same_namespace:
        return False
    if "podSelector" in rule_peer and not selector_matches(rule_peer["podSelector"], peer.labels):
        return False
    return True


def _port_matches(rule_ports: list | None, port: int, pod: Pod) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        value = entry.get("port")
        if value is None:
            return True
        if isinstance(value, str):
            named = [
                p.get("containerPort")
                for c in pod.spec.get("containers") or []
                for p in c.get("ports") or []
                if p.get("name") == value
            ]
            if port in named:
                return True
        elif value <= port <= entry.get("endPort", value):
            return True
    return False


def ingress_allowed(policies: list[dict], pod: Pod, peer: Peer, port: int) -> bool:
    """Whether a TCP connection from `peer` to `port` of `pod` is allowed, the pod and the policies
    being in one namespace."""
    selecting = [
        p for p in policies
        if "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
        and selector_matches((p.get("spec") or {}).get("podSelector"), pod.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            peers = rule.get("from")
            if peers and not any(_peer_matches(rp, peer) for rp in peers):
                continue
            if _port_matches(rule.get("ports"), port, pod):
                return True
    return False


OPERATOR_NAMESPACE = {"adyton.dev/operators": "true", "kubernetes.io/metadata.name": "ops"}
OTHER_NAMESPACE = {"kubernetes.io/metadata.name": "elsewhere"}


def network_problems(objects: list[dict], expect: Expect) -> list[str]:
    if not expect.stack:
        return []
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    problems: list[str] = []
    if not any(
        selector_matches((p.get("spec") or {}).get("podSelector"), {"any": "pod"})
        and not (p.get("spec") or {}).get("podSelector", {}).get("matchLabels")
        and not (p.get("spec") or {}).get("podSelector", {}).get("matchExpressions")
        and (p.get("spec") or {}).get("policyTypes") == ["Ingress"]
        and not (p.get("spec") or {}).get("ingress")
        for p in policies
    ):
        problems.append("no default-deny ingress NetworkPolicy selects every pod")

    by_component: dict[str, Pod] = {}
    for pod in pods(objects):
        component = pod.labels.get("app.kubernetes.io/component") or pod.component
        by_component[component] = pod
    wanted = ("kbs", "kbs-admin", "kbs-postgres", "registry", "predictor" if expect.kserve else "inference-server")
    for component in wanted:
        if component not in by_component:
            problems.append(f"no pod template of component {component}")
    if problems:
        return problems
    server = by_component["predictor" if expect.kserve else "inference-server"]

    def same(description: str, labels: dict) -> Peer:
        return Peer(description, labels, {"kubernetes.io/metadata.name": "adyton"}, True)

    peers = {
        "server": same("an inference server pod", server.labels),
        "kbs": same("a KBS transfer pod", by_component["kbs"].labels),
        "kbs-admin": same("a KBS admin pod", by_component["kbs-admin"].labels),
        "registry": same("a registry pod", by_component["registry"].labels),
        "unlabelled": same("an unlabelled pod of the namespace", {"app": "other"}),
        "operator-here": same("an operator-labelled pod of the namespace", {"adyton.dev/role": "operator"}),
        "operator": Peer("an operator pod of an operators' namespace", {"adyton.dev/role": "operator"},
                         OPERATOR_NAMESPACE, False),
        "ops-unlabelled": Peer("an unlabelled pod of an operators' namespace", {"app": "shell"},
                               OPERATOR_NAMESPACE, False),
        "server-elsewhere": Peer("an inference-server-labelled pod of another namespace",
                                 {"adyton.dev/role": "inference-server"}, OTHER_NAMESPACE, False),
        "outside": Peer("a client outside the cluster", None, None, False),
    }
    # (target component, port, allowed peers, denied peers)
    expectations = [
        ("kbs", 8443, ["server"],
         ["kbs-admin", "registry", "unlabelled", "operator-here", "operator", "ops-unlabelled",
          "server-elsewhere", "outside"]),
        ("kbs", 5432, [], ["server"]),
        ("kbs-admin", 8443, ["operator"],
         ["server", "kbs", "registry", "unlabelled", "operator-here", "ops-unlabelled",
          "server-elsewhere", "outside"]),
        ("kbs-postgres", 5432, ["kbs", "kbs-admin"],
         ["server", "registry", "unlabelled", "operator", "outside"]),
        ("kbs-postgres", 8443, [], ["kbs"]),
        ("registry", 8444, ["server", "operator"], ["unlabelled", "ops-unlabelled", "outside"]),
        ("predictor" if expect.kserve else "inference-server", 8443,
         ["outside", "unlabelled", "operator"], []),
        ("predictor" if expect.kserve else "inference-server", 9090, [], ["outside", "unlabelled"]),
    ]
    for component, port, allowed, denied in expectations:
        target = by_component[component]
        for key in allowed:
            if not ingress_allowed(policies, target, peers[key], port):
                problems.append(f"NetworkPolicy: {peers[key].description} cannot reach {component}:{port}")
        for key in denied:
            if ingress_allowed(policies, target, peers[key], port):
                problems.append(f"NetworkPolicy: {peers[key].description} can reach {component}:{port}")
    return problems


# ---------------------------------------------------------------------------------------------
# The whole check


def check_objects(objects: list[dict], expect: Expect) -> list[str]:
    """Every problem found in one rendered directory's objects; empty when all is well."""
    problems = schema_problems(objects)
    for pod in pods(objects):
        problems += container_problems(pod)
    problems += server_problems(objects, expect)
    problems += network_problems(objects, expect)
    return problems


def main() -> int:
    started = time.monotonic()
    passed = failed = 0
    for target, expect in TARGETS.items():
        try:
            objects = render(K8S / target)
            problems = check_objects(objects, expect)
        except RuntimeError as error:
            objects, problems = [], [str(error)]
        if problems:
            failed += 1
            print(f"FAIL {target}")
            for problem in problems:
                print(f"  {problem}")
        else:
            passed += 1
            print(f"ok   {target}: {len(objects)} objects")
    print(f"({time.monotonic() - started:.1f} s, {kubectl()})")
    print(f"deploy-k8s: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
