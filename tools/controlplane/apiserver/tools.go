//go:build tools

// Package tools only records the commands this module builds, so that
// `go mod tidy` keeps every dependency of them in go.mod/go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
