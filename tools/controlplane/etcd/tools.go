//go:build tools

// Package tools only records the command this module builds, so that
// `go mod tidy` keeps every dependency of the etcd server in go.mod/go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
