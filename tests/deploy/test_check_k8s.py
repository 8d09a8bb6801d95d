"""Tests of deploy/k8s: every overlay renders and passes check_k8s.check_objects, and each rule of
the check fails on a copy of a rendered overlay modified to break it."""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_k8s  # noqa: E402
from check_k8s import TARGETS, check_objects  # noqa: E402


@functools.lru_cache(maxsize=None)
def _rendered(target: str) -> tuple:
    return tuple(check_k8s.render(check_k8s.K8S / target))


def rendered(target: str) -> list[dict]:
    """A fresh copy of a rendered directory's objects, to modify."""
    return copy.deepcopy(list(_rendered(target)))


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(objects: list[dict], kind: str, name: str, container_name: str | None = None) -> dict:
    spec = find(objects, kind, name)["spec"]
    containers = spec["containers"] if kind == "ServingRuntime" else spec["template"]["spec"]["containers"]
    return next(c for c in containers if container_name is None or c["name"] == container_name)


def pod_spec(objects: list[dict], kind: str, name: str) -> dict:
    return find(objects, kind, name)["spec"]["template"]["spec"]


def problems_of(objects: list[dict], target: str = "overlays/coco-tdx") -> list[str]:
    return check_objects(objects, TARGETS[target])


def assert_problem(objects: list[dict], fragment: str, target: str = "overlays/coco-tdx") -> None:
    problems = problems_of(objects, target)
    assert any(fragment in p for p in problems), f"no problem mentions {fragment!r}: {problems}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_overlay_renders_and_passes(target):
    objects = rendered(target)
    assert objects
    assert check_objects(objects, TARGETS[target]) == []


def test_overlays_set_their_runtime_class_and_tee():
    for target, expect in TARGETS.items():
        if expect.runtime_class is None:
            continue
        servers = [p for p in check_k8s.pods(rendered(target)) if p.labels.get("adyton.dev/role") == "inference-server"]
        assert [s.spec["runtimeClassName"] for s in servers] == [expect.runtime_class], target


def test_coco_dev_is_marked_insecure():
    server = find(rendered("overlays/coco-dev"), "Deployment", "adyton-server")
    assert "for trials only" in server["metadata"]["annotations"]["adyton.dev/insecure"]
    assert server["spec"]["template"]["metadata"]["labels"]["adyton.dev/tee"] == "sim-insecure"


# -- containers --------------------------------------------------------------------------------


def test_a_missing_memory_limit_fails():
    objects = rendered("overlays/coco-tdx")
    del container(objects, "Deployment", "kbs")["resources"]["limits"]["memory"]
    assert_problem(objects, "Deployment/kbs container kbs: no memory in resources.limits")


def test_missing_resources_fail():
    objects = rendered("overlays/coco-tdx")
    del container(objects, "StatefulSet", "kbs-postgres")["resources"]
    assert_problem(objects, "StatefulSet/kbs-postgres container postgres: no cpu in resources.limits")


def test_a_missing_limit_in_the_kserve_runtime_fails():
    objects = rendered("overlays/kserve")
    del container(objects, "ServingRuntime", "adyton")["resources"]["limits"]["cpu"]
    assert_problem(objects, "no cpu in resources.limits", "overlays/kserve")


def test_running_as_root_fails():
    objects = rendered("overlays/coco-tdx")
    container(objects, "Deployment", "registry")["securityContext"]["runAsUser"] = 0
    assert_problem(objects, "Deployment/registry container registry: runs as root")


def test_run_as_non_root_false_at_pod_level_fails():
    objects = rendered("overlays/coco-snp")
    pod_spec(objects, "Deployment", "adyton-server")["securityContext"]["runAsNonRoot"] = False
    assert_problem(objects, "Deployment/adyton-server container adyton-server: runAsNonRoot is not true",
                   "overlays/coco-snp")


def test_no_user_at_all_fails():
    objects = rendered("overlays/coco-tdx")
    del pod_spec(objects, "Deployment", "kbs-admin")["securityContext"]["runAsUser"]
    assert_problem(objects, "Deployment/kbs-admin container kbs-admin: runs as root (runAsUser None)")


def test_privilege_escalation_fails():
    objects = rendered("overlays/coco-tdx")
    container(objects, "Deployment", "adyton-server")["securityContext"]["allowPrivilegeEscalation"] = True
    assert_problem(objects, "allowPrivilegeEscalation is not false")


def test_a_writable_root_filesystem_fails():
    objects = rendered("overlays/coco-tdx")
    container(objects, "Deployment", "kbs")["securityContext"]["readOnlyRootFilesystem"] = False
    assert_problem(objects, "Deployment/kbs container kbs: the root filesystem is not read-only")


def test_privileged_and_added_capabilities_fail():
    objects = rendered("overlays/coco-tdx")
    context = container(objects, "Deployment", "adyton-server")["securityContext"]
    context["privileged"] = True
    context["capabilities"]["add"] = ["SYS_ADMIN"]
    problems = problems_of(objects)
    assert any("privileged" in p for p in problems)
    assert any("adds capabilities ['SYS_ADMIN']" in p for p in problems)


def test_capabilities_not_dropped_fail():
    objects = rendered("overlays/coco-tdx")
    container(objects, "StatefulSet", "kbs-postgres")["securityContext"]["capabilities"]["drop"] = ["NET_RAW"]
    assert_problem(objects, "capabilities do not drop ALL")


def test_an_unconfined_seccomp_profile_fails():
    objects = rendered("overlays/coco-tdx")
    pod_spec(objects, "Deployment", "registry")["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    assert_problem(objects, "Deployment/registry container registry: the seccomp profile is not RuntimeDefault")


def test_host_network_fails():
    objects = rendered("overlays/coco-tdx")
    pod_spec(objects, "Deployment", "adyton-server")["hostNetwork"] = True
    assert_problem(objects, "Deployment/adyton-server: hostNetwork is set")


# -- the inference server ----------------------------------------------------------------------


def test_a_missing_readiness_probe_fails():
    objects = rendered("overlays/coco-tdx")
    del container(objects, "Deployment", "adyton-server")["readinessProbe"]
    assert_problem(objects, "no readiness probe")


def test_a_liveness_probe_over_http_fails():
    objects = rendered("overlays/coco-tdx")
    container(objects, "Deployment", "adyton-server")["livenessProbe"]["httpGet"]["scheme"] = "HTTP"
    assert_problem(objects, "the liveness probe is not over HTTPS")


def test_a_readiness_probe_on_the_wrong_path_fails():
    objects = rendered("overlays/kserve")
    container(objects, "ServingRuntime", "adyton")["readinessProbe"]["httpGet"]["path"] = "/ready"
    assert_problem(objects, "the readiness probe is not an HTTP GET of /v2/health/ready", "overlays/kserve")


def test_the_wrong_runtime_class_fails():
    objects = rendered("overlays/coco-tdx")
    pod_spec(objects, "Deployment", "adyton-server")["runtimeClassName"] = "kata-qemu-coco-dev"
    assert_problem(objects, "runtimeClassName is 'kata-qemu-coco-dev', expected 'kata-qemu-tdx'")


def test_the_base_alone_fails_every_overlay_expectation():
    objects = list(check_k8s.render(check_k8s.K8S / "base"))
    assert_problem(objects, "runtimeClassName is 'adyton-tee-runtime-unset'")


def test_a_kserve_predictor_without_runtime_class_fails():
    objects = rendered("overlays/kserve")
    del find(objects, "InferenceService", "adyton")["spec"]["predictor"]["runtimeClassName"]
    assert_problem(objects, "runtimeClassName is None", "overlays/kserve")


def test_the_wrong_tee_fails():
    objects = rendered("overlays/coco-snp")
    args = container(objects, "Deployment", "adyton-server")["args"]
    args[args.index("--tee") + 1] = "snp"
    assert_problem(objects, "started with --tee ['snp'], expected ['coco']", "overlays/coco-snp")


@pytest.mark.parametrize("target", ["overlays/coco-tdx", "overlays/coco-snp"])
def test_coco_without_the_agents_rest_api_fails(target):
    objects = rendered(target)
    annotations = find(objects, "Deployment", "adyton-server")["spec"]["template"]["metadata"]["annotations"]
    annotations["io.katacontainers.config.hypervisor.kernel_params"] = "agent.guest_components_rest_api=resource"
    assert_problem(objects, "does not enable the attestation agent's REST API", target)
    del annotations["io.katacontainers.config.hypervisor.kernel_params"]
    assert_problem(objects, "does not enable the attestation agent's REST API", target)


def test_coco_in_kserve_without_the_agents_rest_api_fails():
    objects = rendered("overlays/kserve")
    del find(objects, "InferenceService", "adyton")["spec"]["predictor"]["annotations"]
    assert_problem(objects, "does not enable the attestation agent's REST API", "overlays/kserve")


def test_a_missing_autoscaler_fails():
    objects = [o for o in rendered("overlays/coco-tdx") if o["kind"] != "HorizontalPodAutoscaler"]
    assert_problem(objects, "0 HorizontalPodAutoscalers target it")


def test_kserve_in_serverless_mode_fails():
    objects = rendered("overlays/kserve")
    del find(objects, "InferenceService", "adyton")["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert_problem(objects, "not in RawDeployment mode", "overlays/kserve")


def test_a_secret_mounted_into_the_tee_fails():
    objects = rendered("overlays/coco-tdx")
    spec = pod_spec(objects, "Deployment", "adyton-server")
    spec["volumes"].append({"name": "token", "secret": {"secretName": "server-token"}})
    assert_problem(objects, "the Secret volume 'token' is mounted into the TEE")


def test_a_projected_secret_or_a_secret_environment_variable_in_the_tee_fails():
    objects = rendered("overlays/coco-snp")
    spec = pod_spec(objects, "Deployment", "adyton-server")
    spec["volumes"].append({"name": "bundle", "projected": {"sources": [{"secret": {"name": "x"}}]}})
    spec["containers"][0].setdefault("env", []).append(
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "token"}}})
    assert_problem(objects, "the Secret volume 'bundle' is mounted into the TEE", "overlays/coco-snp")
    assert_problem(objects, "the environment variable 'TOKEN' comes from a Secret", "overlays/coco-snp")


def test_a_service_account_token_in_the_tee_fails():
    objects = rendered("overlays/coco-tdx")
    pod_spec(objects, "Deployment", "adyton-server")["automountServiceAccountToken"] = True
    assert_problem(objects, "a service account token is mounted into the TEE")


# -- schemas -----------------------------------------------------------------------------------


def test_an_unknown_field_fails_the_schema():
    objects = rendered("overlays/coco-tdx")
    container(objects, "Deployment", "kbs")["securityContex"] = {}
    assert_problem(objects, "Deployment/kbs: not valid for Kubernetes")


def test_a_wrong_type_fails_the_schema():
    objects = rendered("overlays/coco-tdx")
    find(objects, "Deployment", "registry")["spec"]["replicas"] = "two"
    assert_problem(objects, "Deployment/registry: not valid for Kubernetes 1.25 at `spec.replicas`")


def test_an_unknown_kind_fails():
    objects = rendered("overlays/coco-tdx")
    objects.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert_problem(objects, "no schema for kind Widget of example.com/v1")


def test_a_custom_resource_without_its_required_fields_fails():
    objects = rendered("overlays/kserve")
    del find(objects, "InferenceService", "adyton")["spec"]["predictor"]["model"]["modelFormat"]
    del find(objects, "ServingRuntime", "adyton")["spec"]["supportedModelFormats"]
    problems = problems_of(objects, "overlays/kserve")
    assert any("spec.predictor.model.modelFormat.name is missing" in p for p in problems), problems
    assert any("`spec.supportedModelFormats` is missing" in p for p in problems), problems


def test_a_tls_route_without_backends_fails():
    objects = rendered("examples/tls-passthrough")
    find(objects, "TLSRoute", "adyton-server")["spec"]["rules"] = [{}]
    assert_problem(objects, "every rule needs backendRefs", "examples/tls-passthrough")


# -- NetworkPolicies ---------------------------------------------------------------------------


def test_a_kbs_policy_open_to_every_pod_fails():
    objects = rendered("overlays/coco-tdx")
    find(objects, "NetworkPolicy", "kbs-transfer-from-inference-servers")["spec"]["ingress"][0]["from"] = [
        {"podSelector": {}}
    ]
    assert_problem(objects, "an unlabelled pod of the namespace can reach kbs:8443")


def test_a_kbs_policy_without_port_fails():
    objects = rendered("overlays/coco-tdx")
    del find(objects, "NetworkPolicy", "kbs-transfer-from-inference-servers")["spec"]["ingress"][0]["ports"]
    assert_problem(objects, "an inference server pod can reach kbs:5432")


def test_an_admin_policy_without_namespace_selector_fails():
    objects = rendered("overlays/coco-tdx")
    peer = find(objects, "NetworkPolicy", "kbs-admin-from-operators")["spec"]["ingress"][0]["from"][0]
    del peer["namespaceSelector"]
    problems = problems_of(objects)
    assert any("an operator-labelled pod of the namespace can reach kbs-admin:8443" in p for p in problems)
    assert any("an operator pod of an operators' namespace cannot reach kbs-admin:8443" in p for p in problems)


def test_an_admin_policy_split_into_two_peers_fails():
    # Two peers (namespace OR pod) instead of one with both selectors (namespace AND pod).
    objects = rendered("overlays/coco-tdx")
    rule = find(objects, "NetworkPolicy", "kbs-admin-from-operators")["spec"]["ingress"][0]
    both = rule["from"][0]
    rule["from"] = [{"namespaceSelector": both["namespaceSelector"]}, {"podSelector": both["podSelector"]}]
    assert_problem(objects, "an unlabelled pod of an operators' namespace can reach kbs-admin:8443")


def test_a_policy_selecting_the_wrong_pods_fails():
    objects = rendered("overlays/coco-tdx")
    policy = find(objects, "NetworkPolicy", "kbs-admin-from-operators")
    policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] = "kbs-admn"
    # The admin instance then falls back on the default deny alone: operators are shut out.
    assert_problem(objects, "an operator pod of an operators' namespace cannot reach kbs-admin:8443")


def test_the_database_open_to_the_server_fails():
    objects = rendered("overlays/kserve")
    expression = find(objects, "NetworkPolicy", "kbs-postgres-from-kbs")["spec"]["ingress"][0]["from"][0]
    expression["podSelector"] = {"matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "Exists"}]}
    # The KServe predictor has no component label of ours; a registry pod does.
    assert_problem(objects, "a registry pod can reach kbs-postgres:5432", "overlays/kserve")


def test_a_missing_default_deny_fails():
    objects = [
        o for o in rendered("overlays/coco-dev")
        if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "adyton-default-deny-ingress")
    ]
    assert_problem(objects, "no default-deny ingress NetworkPolicy", "overlays/coco-dev")


def test_a_server_without_its_role_label_cannot_reach_the_kbs():
    objects = rendered("overlays/coco-tdx")
    del find(objects, "Deployment", "adyton-server")["spec"]["template"]["metadata"]["labels"]["adyton.dev/role"]
    problems = problems_of(objects)
    assert any("an inference server pod cannot reach kbs:8443" in p for p in problems), problems


def test_selector_semantics():
    match = check_k8s.selector_matches
    assert match({}, {"a": "1"})
    assert match({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not match({"matchLabels": {"a": "1"}}, {"a": "2"})
    assert match({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["2"]}]}, {})
    assert not match({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {})
    assert not match({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"})
    assert not match({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {"a": "2"})
