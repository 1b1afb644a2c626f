"""Every volume claim of a first `kubectl apply -k` gets a class that exists: prod names one
for each claim (EKS clusters created at 1.30+ have no default StorageClass: a claim naming
none stays Pending), through a marked patch of the overlay; the guide creates each class it
names for every provider it covers, and its apply command checks they exist first, so a
missing class fails at once in one line instead of 900 s later in the first run's ingest."""

from __future__ import annotations

import re

import pytest
import yaml
from k8s_support import (
    K8S,
    VARIANTS,
    add_component,
    by_kind,
    copy_tree,
    guide_commands,
    guide_manifests,
    pod_templates,
    render,
)

RWX_PROVISIONERS = {
    "efs.csi.aws.com",
    "filestore.csi.storage.gke.io",
    "file.csi.azure.com",
    "nfs.csi.k8s.io",
}
BLOCK_PROVISIONERS = {"ebs.csi.aws.com", "pd.csi.storage.gke.io", "disk.csi.azure.com"}
PROD = K8S / "overlays" / "prod" / "kustomization.yaml"


def claims(objects: list[dict]) -> dict[str, dict]:
    """{claim: spec} of every PersistentVolumeClaim a Pod of the objects mounts: the claims
    themselves, and those a StatefulSet makes from its templates."""
    mounted = {
        v["persistentVolumeClaim"]["claimName"]
        for _, pod in pod_templates(objects)
        for v in pod["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    out = {
        n: c["spec"] for n, c in by_kind(objects, "PersistentVolumeClaim").items() if n in mounted
    }
    for sts in by_kind(objects, "StatefulSet").values():
        for template in sts["spec"].get("volumeClaimTemplates", []):
            out[f"{template['metadata']['name']}-{sts['metadata']['name']}-0"] = template["spec"]
    return out


def classless(objects: list[dict], rwx_only: bool) -> list[str]:
    """Claims that name no class (ReadWriteMany ones only, where a default class is sure to
    exist: kind and minikube, for dev; it is never ReadWriteMany)."""
    return sorted(
        name
        for name, spec in claims(objects).items()
        if not spec.get("storageClassName")
        and (not rwx_only or "ReadWriteMany" in spec["accessModes"])
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_claim_names_a_class(rendered, variant):
    prod = variant.startswith("prod")
    assert len(claims(rendered[variant])) >= (2 if prod else 1)
    assert classless(rendered[variant], rwx_only=not prod) == []


def _marked_patches(kustomization: dict) -> list[dict]:
    return [p for p in kustomization["patches"] if "storageClassName" in p.get("patch", "")]


def test_the_check_fails_when_the_overlay_loses_a_class_patch(tmp_path):
    """Each class is set by one marked patch of the prod overlay: without it, its claim
    names no class, and the check above says which."""
    text = PROD.read_text()
    assert len(re.findall(r">>> STORAGE CLASS", text)) == 2, "each class patch is marked"
    expected = {"PersistentVolumeClaim": "dae-root", "StatefulSet": "data-dae-postgres-0"}
    patches = _marked_patches(yaml.safe_load(text))
    assert {p["target"]["kind"]: p["target"]["name"] for p in patches}.keys() == expected.keys()
    for i, patch in enumerate(patches):
        k8s = copy_tree(tmp_path / str(i))
        path = k8s / "overlays" / "prod" / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        kustomization["patches"].remove(patch)
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        assert classless(render(path.parent), rwx_only=False) == [expected[patch["target"]["kind"]]]


def test_the_base_and_components_leave_the_class_to_the_overlays():
    postgres = list(yaml.safe_load_all((K8S / "components/postgres/postgres.yaml").read_text()))
    for objects in (render(K8S / "base"), postgres):
        specs = claims(objects).values()
        assert specs and all(not s.get("storageClassName") for s in specs)


def _named_classes(objects) -> dict[str, set[str]]:
    """{class: the access modes its claims ask for}."""
    out: dict[str, set[str]] = {}
    for spec in claims(objects).values():
        out.setdefault(spec["storageClassName"], set()).update(spec["accessModes"])
    return out


def test_the_guide_creates_every_class_the_overlay_names(rendered):
    named = _named_classes(rendered["prod"])
    classes = [m for m in guide_manifests() if m["kind"] == "StorageClass"]
    assert {c["metadata"]["name"] for c in classes} == set(named)
    for name, modes in named.items():
        provisioners = {c["provisioner"]: c for c in classes if c["metadata"]["name"] == name}
        if "ReadWriteMany" in modes:
            assert set(provisioners) == RWX_PROVISIONERS, name
        else:
            assert set(provisioners) == BLOCK_PROVISIONERS, name
            # A zonal disk is created where its Pod is scheduled, not in a random zone.
            for c in provisioners.values():
                assert c.get("volumeBindingMode") == "WaitForFirstConsumer", c


def test_the_guide_checks_the_classes_before_applying(rendered, tmp_path):
    """`kubectl get storageclass A B` fails in one line naming a missing class; the guide's
    prod apply only runs after it, for every class the overlay (KServe or not) names."""
    named = set(_named_classes(rendered["prod"]))
    kserve = render(add_component(copy_tree(tmp_path), "overlays/prod", "components/kserve"))
    assert set(_named_classes(kserve)) == named
    applies = [c for c in guide_commands() if re.search(r"kubectl apply .*-k k8s/overlays/prod", c)]
    assert applies
    for command in applies:
        first, _, rest = command.partition("&&")
        checked = re.fullmatch(r"kubectl get storageclass ((?:[\w.-]+ ?)+)", first.strip())
        assert checked and "kubectl apply" in rest, command
        assert set(checked.group(1).split()) == named, command
