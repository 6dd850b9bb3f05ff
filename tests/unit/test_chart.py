"""The Helm chart: linted by Helm's library, rendered by the helm binary, validated against kube 1.32.

Helm comes from scripts/setup.sh (helm-sdkpy for lint; helm built from the Go module proxy into
~/.cache/cdi-tools for `helm template`, or $CDI_HELM). Without them the tests fail and say so: they
never skip.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi import clonetoken
from cdi.api import crdgen, default_registry
from cdi.apiserver import bootstrap_policy
from cdi.cli.main import build_parser
from cdi.controller.resources import WorkerPodConfig
from cdi.uploadtoken import Signer, Validator, public_key_pem
from cdi.webhook import WebhookServer

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cdi"
HELM = os.environ.get("CDI_HELM") or str(Path.home() / ".cache" / "cdi-tools" / "helm")
KUBE_VERSION = "1.32.0"

NON_DEFAULT: dict[str, Any] = {
    "image": {"repository": "registry.example.com/cdi/cdi", "tag": "v9", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "workerImages": {"importer": "registry.example.com/cdi/importer:v9"},
    "workerPods": {"podResourceRequirements": {"limits": {"cpu": "2", "memory": "1Gi"}},
                   "imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"disk": "ssd"},
                   "tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}]},
    "storageClass": "fast",
    "vmRuntime": {"enabled": True},
    "controller": {"replicas": 3, "metricsPort": 0, "nodeSelector": {"role": "infra"},
                   "tolerations": [{"key": "infra", "operator": "Exists"}],
                   "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                       {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                           "matchLabels": {"app.kubernetes.io/name": "cdi-controller"}}}}]}}},
    "uploadProxy": {"replicas": 2, "service": {"type": "LoadBalancer"},
                    "ingress": {"enabled": True, "className": "nginx", "host": "upload.example.com",
                                "tlsSecretName": "upload-tls", "annotations": {"x": "on"}}},
    "webhook": {"replicas": 1, "failurePolicy": "Ignore", "certManager": {"enabled": True}},
    "podDisruptionBudget": {"maxUnavailable": 2},
    "userRoles": {"enabled": False},
}


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merge(base.get(k), v) if k in base else v for k, v in over.items()} | {
            k: v for k, v in base.items() if k not in over}
    return copy.deepcopy(over)


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (kube-apiserver's decoder does)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise AssertionError(f"duplicate keys {sorted(dup)} at line {node.start_mark.line + 1}")
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def helm() -> str:
    if not (os.path.isfile(HELM) and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm not found at {HELM}: run scripts/setup.sh (or set CDI_HELM)")
    return HELM


def template(values: dict | None = None, *, namespace: str = "cdi", tmp: Path | None = None) -> list[dict]:
    args = [helm(), "template", "cdi", str(CHART), "-n", namespace, "--include-crds", "--kube-version", KUBE_VERSION]
    if values:
        assert tmp is not None
        (tmp / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["-f", str(tmp / "values.yaml")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return [d for d in yaml.load_all(proc.stdout, Loader=_StrictLoader) if d]


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    return template()


@pytest.fixture(scope="module")
def custom_docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return template(NON_DEFAULT, tmp=tmp_path_factory.mktemp("values"))


def find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _lint(chart: Path) -> dict:
    import helm_sdkpy  # scripts/setup.sh installs it (it needs --ignore-requires-python on 3.11)

    return asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace="cdi")).run(str(chart)))


def _lint_errors(result: dict) -> list[dict]:
    return [m for m in result.get("Messages") or [] if m.get("Severity") == 3]


@pytest.mark.slow
def test_lint_default_and_non_default_values_and_a_broken_template_is_caught(tmp_path: Path) -> None:
    assert _lint_errors(_lint(CHART)) == [] and not _lint(CHART).get("Errors")
    custom = tmp_path / "cdi"
    shutil.copytree(CHART, custom)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (custom / "values.yaml").write_text(yaml.safe_dump(_merge(values, NON_DEFAULT)))
    result = _lint(custom)
    assert _lint_errors(result) == [] and not result.get("Errors")
    (custom / "templates" / "broken.yaml").write_text("{{ .Values.nothing.here }}\n")
    assert len(_lint_errors(_lint(custom))) == 1


@pytest.mark.parametrize("which", ["default", "custom"])
def test_every_rendered_manifest_validates_against_kubernetes_1_32(which: str, default_docs: list[dict],
                                                                  custom_docs: list[dict]) -> None:
    docs = default_docs if which == "default" else custom_docs
    unchecked = []
    for doc in docs:
        if doc["apiVersion"].startswith("cert-manager.io/"):
            unchecked.append(doc["kind"])  # cert-manager's kinds are not in kube's schemas
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert sorted(unchecked) == ([] if which == "default" else ["Certificate", "Issuer"])


def test_crds_are_the_generated_ones(default_docs: list[dict]) -> None:
    crds = {d["metadata"]["name"]: d for d in default_docs if d["kind"] == "CustomResourceDefinition"}
    expected = {k.group_resource: crdgen.crd(k) for k in crdgen.crd_kinds(default_registry())}
    assert crds == expected


def test_controller_cluster_role_is_exactly_the_controllers_rules(default_docs: list[dict]) -> None:
    role = find(default_docs, "ClusterRole", "cdi-controller")
    assert role["rules"] == yaml.safe_load((CHART / "files" / "controller-rules.yaml").read_text())
    binding = find(default_docs, "ClusterRoleBinding", "cdi-controller")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cdi-controller", "namespace": "cdi"}]
    role = find(default_docs, "Role", "cdi-controller")  # the upload signers, in the cdi namespace only
    assert role["metadata"]["namespace"] == "cdi"
    assert role["rules"] == yaml.safe_load((CHART / "files" / "controller-namespace-rules.yaml").read_text())
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get"]}]
    assert find(default_docs, "RoleBinding", "cdi-controller")["subjects"] == binding["subjects"]
    cluster = {(g, r): set(rule["verbs"]) for rule in find(default_docs, "ClusterRole", "cdi-controller")["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("", "namespaces") not in cluster  # the chart makes the namespace
    assert not cluster[("", "secrets")] & {"list", "watch"}


def test_user_roles_aggregate_into_admin_edit_view_with_the_servers_rules(default_docs: list[dict],
                                                                         custom_docs: list[dict]) -> None:
    expected = {"admin": bootstrap_policy._CDI_EDIT, "edit": bootstrap_policy._CDI_EDIT,
                "view": bootstrap_policy._CDI_VIEW}
    for name, rules in expected.items():
        role = find(default_docs, "ClusterRole", f"cdi.kubevirt.io:{name}")
        assert role["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{name}"] == "true"
        assert role["rules"] == [{"apiGroups": r["apiGroups"], "resources": r["resources"], "verbs": r["verbs"]}
                                 for r in rules]
    assert not [d for d in custom_docs if d["metadata"]["name"].startswith("cdi.kubevirt.io:")]


def test_least_privilege_for_the_webhook_and_the_upload_proxy(default_docs: list[dict]) -> None:
    bound = [d["roleRef"]["name"] for d in default_docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s["name"] == "cdi-webhook" for s in d["subjects"])]
    assert bound == ["cdi-webhook"]
    assert find(default_docs, "ClusterRole", "cdi-webhook")["rules"] == [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]
    proxy = find(default_docs, "ClusterRole", "cdi-uploadproxy")
    assert proxy["rules"] == [
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]
    reader = find(default_docs, "RoleBinding", "cdi-uploadproxy-auth-reader")
    assert (reader["metadata"]["namespace"], reader["roleRef"]["name"]) == (
        "kube-system", "extension-apiserver-authentication-reader")
    assert find(default_docs, "Role", "cdi-uploadproxy")["metadata"]["namespace"] == "cdi"


def _containers(docs: list[dict]) -> dict[str, dict]:
    """Every container of every Deployment, by `deployment` (its first) or `deployment/container`."""
    out = {}
    for d in docs:
        if d["kind"] == "Deployment":
            for i, c in enumerate(d["spec"]["template"]["spec"]["containers"]):
                out[d["metadata"]["name"] + ("" if i == 0 else "/" + c["name"])] = c
    return out


@pytest.mark.parametrize("which", ["default", "custom"])
def test_every_container_command_is_a_cdi_subcommand_taking_those_flags(which: str, default_docs: list[dict],
                                                                       custom_docs: list[dict]) -> None:
    docs = default_docs if which == "default" else custom_docs
    parser = build_parser()
    containers = _containers(docs)
    assert sorted(containers) == ["cdi-controller", "cdi-uploadproxy", "cdi-uploadproxy/upload-api", "cdi-webhook"]
    for name, c in containers.items():
        assert c["command"][0] == "cdi", name
        args = parser.parse_args([*c["command"][1:], *c["args"]])  # exits (SystemExit) on an unknown flag
        assert args.command == c["command"][1]
    controller = parser.parse_args(containers["cdi-controller"]["command"][1:] + containers["cdi-controller"]["args"])
    if which == "default":
        assert controller.leader_elect and not controller.vm and controller.metrics_port == 8080
        assert controller.importer_image == controller.cloner_image == "localhost/cdi:0.1.0"
        assert controller.clone_token_key == "/etc/cdi/token/key.pem"
        webhook = parser.parse_args(containers["cdi-webhook"]["command"][1:] + containers["cdi-webhook"]["args"])
        assert webhook.token_key == controller.clone_token_key and not webhook.no_clone_check
    else:
        assert controller.vm and controller.storage_class == "fast" and controller.metrics_port == 0
        assert controller.importer_image == "registry.example.com/cdi/importer:v9"
        assert controller.cloner_image == "registry.example.com/cdi/cdi:v9"


def test_worker_pod_config_is_one_the_controller_accepts(custom_docs: list[dict]) -> None:
    data = yaml.safe_load(find(custom_docs, "ConfigMap", "cdi-worker-pods")["data"]["worker-pods.yaml"])
    config = WorkerPodConfig.from_dict(data)
    assert config.node_selector == {"disk": "ssd"} and config.image_pull_secrets == ["regcred"]
    assert config.resources == {"limits": {"cpu": "2", "memory": "1Gi"}}


def test_placement_replicas_pdb_and_ingress_follow_the_values(default_docs: list[dict],
                                                             custom_docs: list[dict]) -> None:
    ctl = find(custom_docs, "Deployment", "cdi-controller")
    spec = ctl["spec"]["template"]["spec"]
    assert ctl["spec"]["replicas"] == 3 and spec["nodeSelector"] == {"role": "infra"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and "podAntiAffinity" in spec["affinity"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    pdbs = {d["metadata"]["name"]: d["spec"] for d in custom_docs if d["kind"] == "PodDisruptionBudget"}
    selector = {"app.kubernetes.io/instance": "cdi"}
    assert pdbs == {n: {"maxUnavailable": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": n, **selector}}}
                    for n in ("cdi-controller", "cdi-uploadproxy")}
    assert sorted(d["metadata"]["name"] for d in default_docs if d["kind"] == "PodDisruptionBudget") == [
        "cdi-controller", "cdi-webhook"]
    ingress = find(custom_docs, "Ingress", "cdi-uploadproxy")
    assert ingress["spec"]["rules"][0]["host"] == "upload.example.com"
    assert ingress["metadata"]["annotations"]["x"] == "on"  # quoted: YAML 1.1 would read on as true
    assert ingress["spec"]["tls"] == [{"hosts": ["upload.example.com"], "secretName": "upload-tls"}]
    assert not [d for d in default_docs if d["kind"] == "Ingress"]
    assert find(custom_docs, "Service", "cdi-uploadproxy")["spec"]["type"] == "LoadBalancer"


def test_webhook_rules_follow_the_vm_runtime_and_the_failure_policy(default_docs: list[dict],
                                                                   custom_docs: list[dict]) -> None:
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        (hook,) = find(default_docs, kind, f"cdi-{kind[:-len('WebhookConfiguration')].lower()}")["webhooks"]
        assert [r["resources"] for r in hook["rules"]] == [["datavolumes"]]
        assert hook["failurePolicy"] == "Fail" and hook["admissionReviewVersions"] == ["v1"]
        assert hook["clientConfig"]["service"]["path"] == ("/validate" if kind.startswith("V") else "/mutate")
        (custom,) = find(custom_docs, kind, f"cdi-{kind[:-len('WebhookConfiguration')].lower()}")["webhooks"]
        assert [r["resources"] for r in custom["rules"]] == [["datavolumes"],
                                                             ["virtualmachines", "virtualmachineinstances"]]
        assert custom["failurePolicy"] == "Ignore" and "caBundle" not in custom["clientConfig"]
    assert find(custom_docs, "Certificate", "cdi-webhook")["spec"]["dnsNames"][0] == "cdi-webhook.cdi.svc"


def _bundles(docs: list[dict]) -> dict[str, tuple[dict, list[str]]]:
    (hook,) = find(docs, "ValidatingWebhookConfiguration", "cdi-validating")["webhooks"]
    (mhook,) = find(docs, "MutatingWebhookConfiguration", "cdi-mutating")["webhooks"]
    api = find(docs, "APIService", "v1beta1.upload.cdi.kubevirt.io")["spec"]
    return {"cdi-webhook": (find(docs, "Secret", "cdi-webhook-tls")["data"],
                            [hook["clientConfig"]["caBundle"], mhook["clientConfig"]["caBundle"]]),
            "cdi-upload-api": (find(docs, "Secret", "cdi-upload-api-tls")["data"], [api["caBundle"]])}


@pytest.mark.parametrize("service", ["cdi-webhook", "cdi-upload-api"])
def test_the_charts_certificates_serve_tls_that_the_ca_bundles_verify(service: str, default_docs: list[dict],
                                                                     tmp_path: Path) -> None:
    secret, bundles = _bundles(default_docs)[service]
    assert set(bundles) == {secret["ca.crt"]}
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret[key]))
    server = WebhookServer([], cert_file=str(tmp_path / "tls.crt"), key_file=str(tmp_path / "tls.key")).start()
    try:
        ctx = ssl.create_default_context(cadata=base64.b64decode(bundles[0]).decode())
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=f"{service}.cdi.svc") as tls:
            assert tls.version() is not None
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"), \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=f"{service}.other.svc"):
            pass
    finally:
        server.stop()


def test_refusals_name_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as typo:  # values.schema.json: a misspelt or wrong value is named
        template({"vmRuntime": {"enable": True}, "webhook": {"failurePolicy": "Fial"}}, tmp=tmp_path)
    assert "vmRuntime: Additional property enable is not allowed" in str(typo.value)
    assert 'webhook.failurePolicy must be one of the following: "Fail", "Ignore"' in str(typo.value)
    with pytest.raises(RuntimeError, match='install cdi into the namespace cdi .* not in "default"'):
        template(namespace="default")
    with pytest.raises(RuntimeError, match="controller.replicas > 1 needs controller.leaderElection.enabled"):
        template({"controller": {"leaderElection": {"enabled": False}}}, tmp=tmp_path)
    with pytest.raises(RuntimeError, match="controller.replicas: Must be greater than or equal to 1"):
        template({"controller": {"replicas": 0}}, tmp=tmp_path)  # nothing would reconcile
    with pytest.raises(RuntimeError, match="webhook.replicas: 0 with webhook.failurePolicy: Fail refuses every "
                                           "DataVolume write"):
        template({"webhook": {"replicas": 0}}, tmp=tmp_path)
    docs = template({"webhook": {"replicas": 0, "failurePolicy": "Ignore"}}, tmp=tmp_path)
    assert find(docs, "Deployment", "cdi-webhook")["spec"]["replicas"] == 0


def test_the_charts_token_key_signs_and_checks_upload_and_clone_tokens(default_docs: list[dict]) -> None:
    pem = base64.b64decode(find(default_docs, "Secret", "cdi-upload-token")["data"]["key.pem"])
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)  # what cdi webhook --token-key needs
    token = clonetoken.issue(Signer(key), "src", "golden", "dst", "copy")
    assert clonetoken.TokenCheck(pem).check(token, "src", "golden", "dst", "copy") is None  # the controller's view
    assert Validator(public_key_pem(pem)).validate(Signer(key).upload_token("dst", "disk")).name == "disk"


def test_the_plain_helm_template_command_of_the_readme_renders() -> None:
    """scripts/setup.sh links Helm as its Makefile does, so its default Kubernetes version meets the
    chart's kubeVersion and no --kube-version is needed."""
    proc = subprocess.run([helm(), "template", "cdi", str(CHART), "-n", "cdi"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"{proc.stderr} (a helm built by an older scripts/setup.sh: run it again)"
    assert any(d and d["kind"] == "Deployment" for d in yaml.safe_load_all(proc.stdout))
