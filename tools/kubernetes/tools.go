//go:build tools

// Package tools pins a Kubernetes control plane built from source for the tests that run
// `pulumi up` against a real API server (devtools/localcluster/): kube-apiserver,
// kube-controller-manager, kube-scheduler and kubectl of Kubernetes v1.34.12, and the etcd
// server (v3.6.4, the version that Kubernetes release itself requires). No kubelet.
// tools/build-kube.sh builds them.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
