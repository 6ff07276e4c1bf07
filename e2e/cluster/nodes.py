"""Expand e2e/cluster/nodes.yaml into kwok Node manifests (a YAML stream on stdout).

Used by e2e/cluster/cluster.sh (local kwok cluster) and e2e/kind/run.sh (kwok inside
kind), so both clusters get the same fake GPU node layout:

    python e2e/cluster/nodes.py [e2e/cluster/nodes.yaml] | kubectl apply -f -
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_LAYOUT = Path(__file__).with_name("nodes.yaml")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
POOL_LABEL = "llm-operator.io/node-pool"


def node_manifests(layout: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one Node object per node of every pool in ``layout``."""
    nodes: list[dict[str, Any]] = []
    for pool in layout["pools"]:
        for index in range(int(pool["count"])):
            nodes.append(_node(pool, f"{pool['name']}-{index}", index))
    return nodes


def _node(pool: dict[str, Any], name: str, index: int) -> dict[str, Any]:
    zone = f"us-east-1{'abc'[index % 3]}"
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": pool["instanceType"],
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": zone,
        "type": "kwok",
        POOL_LABEL: pool["name"],
    }
    resources = {
        "cpu": str(pool["cpu"]),
        "memory": str(pool["memory"]),
        "pods": str(pool.get("pods", "110")),
        "ephemeral-storage": str(pool.get("ephemeralStorage", "500Gi")),
    }
    taints: list[dict[str, str]] = []
    gpu = pool.get("gpu")
    if gpu:
        # What the NVIDIA device plugin (resource) and GPU feature discovery (labels) publish.
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu["product"],
                "nvidia.com/gpu.count": str(gpu["count"]),
                "nvidia.com/gpu.memory": str(gpu["memoryMiB"]),
                "nvidia.com/gpu.family": gpu.get("family", ""),
                "nvidia.com/gpu.compute.major": str(gpu.get("computeMajor", "")),
                "nvidia.com/gpu.compute.minor": str(gpu.get("computeMinor", "")),
                "nvidia.com/gpu.machine": pool["instanceType"],
            }
        )
        labels = {k: v for k, v in labels.items() if v != ""}
        resources[GPU_RESOURCE] = str(gpu["count"])
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            # kwok manages only nodes with this annotation.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "allocatable": dict(resources),
            "capacity": dict(resources),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_LAYOUT
    layout = yaml.safe_load(path.read_text())
    yaml.safe_dump_all(node_manifests(layout), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
