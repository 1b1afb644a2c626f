"""Render every overlay once per session (see k8s_support)."""

from __future__ import annotations

import pytest
from k8s_support import K8S, VARIANTS, add_component, copy_tree, render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """{variant: [objects]} for every overlay as it is, and with the KServe component added
    exactly as the README says: one more entry in the overlay's own `components:` list (on a
    copy of k8s/), so the overlay's patches run after the component, as they would."""
    out = {}
    for name, (overlay, component) in VARIANTS.items():
        if component is None:
            out[name] = render(K8S / overlay)
            continue
        k8s = copy_tree(tmp_path_factory.mktemp(name.replace("+", "-")))
        out[name] = render(add_component(k8s, overlay, component))
    return out
