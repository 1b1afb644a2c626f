"""cluster-down takes away only the cluster's own iptables rules (node._without_chains): the
machine may run other CNI users (buildah's and podman's networks) at the same time."""

from __future__ import annotations

import node

DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-0c1d2e3f - [0:0]
:CNI-9a8b7c6d - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.244.0.5/32 -m comment --comment "name: \\"dae-test\\"" -j CNI-0c1d2e3f
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \\"podman\\"" -j CNI-9a8b7c6d
-A CNI-0c1d2e3f -d 10.244.0.0/24 -m comment --comment "name: \\"dae-test\\"" -j ACCEPT
-A CNI-9a8b7c6d -d 10.88.0.0/16 -m comment --comment "name: \\"podman\\"" -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y
COMMIT
"""


def test_down_keeps_other_networks_rules_and_drops_ours():
    kept = node._without_chains(DUMP)
    assert "KUBE-" not in kept
    assert "dae-test" not in kept and "CNI-0c1d2e3f" not in kept
    podman = [line for line in DUMP.splitlines() if "9a8b7c6d" in line]
    assert podman and all(line in kept.splitlines() for line in podman)
    assert kept.splitlines()[:3] == [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    assert kept.splitlines()[-1] == "COMMIT"
