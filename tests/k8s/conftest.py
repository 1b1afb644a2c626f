"""Render every overlay once per session (see k8s_support)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from k8s_support import K8S, NAMESPACES, VARIANTS, render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """{variant: [objects]} for every overlay, with and without the KServe component."""
    out = {}
    for name, (overlay, component) in VARIANTS.items():
        if component is None:
            out[name] = render(K8S / overlay)
            continue
        # As if the overlay listed the component (kustomize wants relative paths).
        tmp = tmp_path_factory.mktemp(name.replace("+", "-"))
        rel = Path(os.path.relpath(K8S, tmp))
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACES[name.split("+")[0]],
            "resources": [str(rel / overlay)],
            "components": [str(rel / component)],
        }
        (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        out[name] = render(tmp)
    return out
