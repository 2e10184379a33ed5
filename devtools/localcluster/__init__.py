"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (v1.34.12, built from Go modules by tools/build-kube.sh). No kubelet: pods are
admitted and scheduled (or left Pending), never run.

    with start_cluster(tmp_path / "cluster") as cluster:
        cluster.kubectl("get", "ns")
        # KUBECONFIG=cluster.kubeconfig for pulumi-kubernetes, client libraries, ...

`python -m devtools.localcluster` starts one in ./.localcluster until Ctrl-C.
"""

from devtools.localcluster.cluster import KUBERNETES_VERSION, Cluster, kube_bin_dir, start_cluster
from devtools.localcluster.processes import ClusterError

__all__ = ["KUBERNETES_VERSION", "Cluster", "ClusterError", "kube_bin_dir", "start_cluster"]
