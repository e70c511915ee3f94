"""deploy/kubernetes/ and deploy/Containerfile: the manifests validate against Kubernetes'
schemas (kubernetes-validate, offline), keep the properties docs/install.md promises, and the
ConfigMap's gw.ini passes ``mtlsgw check-config`` with the files where the Deployment mounts the
Secrets. The image itself is not built here (no container runtime in CI)."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.pki import write_dev_pki

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
# Core resources; certificate.yaml (cert-manager) and kustomization.yaml have no schema there.
CORE = ["configmap.yaml", "client-ca.yaml", "deployment.yaml", "service.yaml", "pdb.yaml",
        "networkpolicy.yaml"]
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# The keys of the Secret cert-manager writes for a Certificate.
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}


def load(name: str) -> dict[str, Any]:
    (document,) = list(yaml.safe_load_all((K8S / name).read_text()))
    assert isinstance(document, dict)
    return document


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = load("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container(name: str = "mtlsgw") -> dict[str, Any]:
    return next(c for c in pod()["containers"] if c["name"] == name)


def gw_ini() -> str:
    text: str = load("configmap.yaml")["data"]["gw.ini"]
    return text


def ini_values() -> dict[tuple[str, str], str]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read_string(gw_ini())
    return {(s, k): v for s in parser.sections() for k, v in parser[s].items()}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_manifest_validates(name: str, version: str) -> None:
    for document in yaml.safe_load_all((K8S / name).read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = load("kustomization.yaml")["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def test_certificate_writes_the_secret_the_deployment_mounts() -> None:
    certificate = load("certificate.yaml")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["kind"] == "Certificate"
    secrets = {v["secret"]["secretName"] for v in pod()["volumes"] if "secret" in v}
    assert certificate["spec"]["secretName"] in secrets
    assert "server auth" in certificate["spec"]["usages"]


def test_pod_is_locked_down() -> None:
    spec = pod()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    gateway = container()
    assert gateway["readinessProbe"] and gateway["livenessProbe"]
    anti = spec["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "topologyKey"] == "kubernetes.io/hostname"
    assert load("pdb.yaml")["spec"]["minAvailable"] >= 1
    assert load("deployment.yaml")["spec"]["replicas"] >= 2


def test_secrets_are_mounted_as_directories_never_with_subpath() -> None:
    for c in pod()["containers"]:
        for mount in c["volumeMounts"]:
            assert "subPath" not in mount and "subPathExpr" not in mount, mount


def test_grace_period_exceeds_the_drain_delay_and_the_drain() -> None:
    drain_timeout = float(ini_values()[("gateway", "drain_timeout")])
    drain_delay = float(ini_values()[("gateway", "drain_delay")])
    assert drain_delay > 0  # the pod keeps serving while it leaves the Service's endpoints
    assert "lifecycle" not in container()  # no preStop pause on top of it
    assert pod()["terminationGracePeriodSeconds"] > drain_delay + drain_timeout


def test_probes_ask_the_status_listener() -> None:
    gateway = container()
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    listen = ini_values()[("status", "listen")]
    assert listen == f"tcp:{ports['status']}"  # all interfaces: the kubelet probes the pod IP
    assert ini_values()[("status", "allow_non_loopback")] == "yes"
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "status"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "status"}


def test_the_gateway_watches_the_mounted_files_itself() -> None:
    assert ini_values()[("gateway", "watch_files")] == "yes"
    assert [c["name"] for c in pod()["containers"]] == ["mtlsgw"]  # no reloader sidecar
    assert "shareProcessNamespace" not in pod()
    # every file gw.ini names is under a mounted volume, whose ..data swap the watcher sees
    mounted = {m["mountPath"] for m in container()["volumeMounts"]}
    named = re.findall(r"= (/etc/mtlsgw/[\w-]+)/", gw_ini())
    assert named and all(path in mounted for path in named)


def mounts() -> dict[str, dict[str, Any]]:
    """The gateway container's mount path -> its volume."""
    volumes = {v["name"]: v for v in pod()["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}


def test_configmap_gw_ini_passes_check_config_with_the_secrets_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    clients = write_dev_pki(tmp_path / "pki")
    files: dict[str, Path] = {}
    for path, volume in mounts().items():
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if name == load("certificate.yaml")["spec"]["secretName"]:
                keys = {"tls.crt": clients.server_cert, "tls.key": clients.server_key,
                        "ca.crt": clients.ca}
                assert set(keys) == CERT_MANAGER_KEYS
            else:
                secret = load("client-ca.yaml")
                assert secret["metadata"]["name"] == name
                keys = {key: clients.ca for key in secret["stringData"]}
            files.update({f"{path}/{key}": source for key, source in keys.items()})
        elif "configMap" in volume:
            configmap = load("configmap.yaml")
            assert configmap["metadata"]["name"] == volume["configMap"]["name"]
            files.update({f"{path}/{key}": Path("-") for key in configmap["data"]})
    # Every file gw.ini names is a key of a mounted Secret.
    named = [v for (s, k), v in ini_values().items() if s == "tls"
             and k in ("certificate", "private_key", "client_ca")]
    assert named and all(value in files for value in named), (named, sorted(files))
    for path, source in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source == Path("-"):
            target.write_text(gw_ini().replace("/etc/mtlsgw/", f"{root}/etc/mtlsgw/"))
        else:
            target.write_bytes(source.read_bytes())
    config = root / "etc/mtlsgw/config/gw.ini"
    assert container()["args"] == ["--config", "/etc/mtlsgw/config/gw.ini"]
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "listener main: tcp:8443 (mTLS)" in result.stdout


def test_containerfile_runs_twistd_as_a_user_on_debian_slim() -> None:
    text = CONTAINERFILE.read_text()
    assert re.search(r"(?m)^FROM debian:\S+-slim$", text)
    assert "COPY dist/*.whl" in text
    (user,) = re.findall(r"(?m)^USER (\S+)$", text)
    assert not user.startswith(("0", "root"))
    assert str(pod()["securityContext"]["runAsUser"]) == user.split(":")[0]
    entry = re.search(r"(?m)^ENTRYPOINT (\[.*\])$", text)
    assert entry and '"--nodaemon"' in entry.group(1) and '"mtlsgw"' in entry.group(1)
    assert "getPlugins(IPlugin)" in text  # the plugin cache, built at image build time
