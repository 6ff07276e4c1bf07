# Local cluster targets (kwok + real control plane + Prometheus). Filled in by the cluster work.
