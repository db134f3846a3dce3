"""The deployment manifests against the schemas of what reads them, offline.

- `deploy/k8s`, rendered as `kubectl apply -k` renders it, against the Kubernetes JSON schemas of
  current releases (PyPI `kubernetes-validate`, which ships them; strict: an unknown field is an
  error, as `kubectl apply --validate=strict` makes it).
- `docker-compose.yml` against the compose-spec JSON schema (vendored in PyPI `check-jsonschema`),
  and with `docker compose config` where the compose plugin exists (it does not on the
  development machine: no Docker).

Rendering: `kubectl kustomize` where kubectl is installed (the development machine and CI have
it); else this file's own rendering of the three kustomization fields the project uses
(`resources`, `namespace`, `images`), which a test checks against kubectl's output.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
# The oldest release still in upstream support when this was written, and the newest the
# package knows: a manifest valid for both is valid in between.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
RENDERED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images"}


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` makes of a kustomization using only resources, namespace and
    images (newName/newTag): anything else is refused rather than rendered wrong."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - RENDERED_FIELDS
    if unsupported:
        raise NotImplementedError(f"kustomization fields {sorted(unsupported)}: use kubectl")
    images = {i["name"]: i for i in kustomization.get("images", [])}
    objects = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((directory / resource).read_text()):
            if not doc:
                continue
            obj = copy.deepcopy(doc)
            if "namespace" in kustomization and obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
            for container in containers(obj):
                name, _, tag = container["image"].partition(":")
                if name in images:
                    rule = images[name]
                    new_tag = rule.get("newTag", tag)
                    image = rule.get("newName", name)
                    container["image"] = f"{image}:{new_tag}" if new_tag else image
            objects.append(obj)
    return objects


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
    pod = template.get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def kubectl_kustomize(kubectl: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def kubectl_rendered() -> list[dict[str, Any]] | None:
    """`kubectl kustomize`'s output, rendered once for the module (None: kubectl is missing)."""
    kubectl = shutil.which("kubectl")
    return None if kubectl is None else kubectl_kustomize(kubectl)


@pytest.fixture
def rendered(kubectl_rendered: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The manifests as `kubectl apply -k` renders them; each test gets its own copy."""
    if kubectl_rendered is None:
        return render_kustomization(K8S)
    return copy.deepcopy(kubectl_rendered)


def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_k8s_manifests_match_the_kubernetes_schemas(
    version: str, rendered: list[dict[str, Any]]
) -> None:
    objects = rendered
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{'/'.join(identity(obj))}: {exc.message} at {list(exc.path)}")

    assert len(objects) >= len(
        yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    )
    assert errors == []


def test_kubernetes_schema_check_refuses_an_unknown_field(
    rendered: list[dict[str, Any]],
) -> None:
    (deployment, *_) = [o for o in rendered if o["kind"] == "Deployment"]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 40

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_own_rendering_is_what_kubectl_renders(
    kubectl_rendered: list[dict[str, Any]] | None,
) -> None:
    assert kubectl_rendered is not None, (
        "kubectl is part of the development image (Debian package kubectl)"
    )
    theirs = sorted(kubectl_rendered, key=identity)

    assert sorted(render_kustomization(K8S), key=identity) == theirs


def compose_schema_errors(path: Path) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def docker_compose() -> list[str] | None:
    """`docker compose` when the CLI and its compose plugin are installed."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, check=False, timeout=30
    )
    return [docker, "compose"] if probe.returncode == 0 else None


def test_compose_file_is_valid() -> None:
    compose = docker_compose()
    if compose is not None:  # interpolation, profiles, merges: what `up` would see
        result = subprocess.run(
            [*compose, "--profile", "dev", "--profile", "observability", "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    assert compose_schema_errors(COMPOSE) == ""


def test_compose_schema_check_refuses_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_perio:"))

    assert "stop_grace_perio" in compose_schema_errors(broken)
