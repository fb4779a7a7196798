//go:build tools

// Package tools only records the command this module builds, so that
// `go mod tidy` keeps every dependency of it in go.mod/go.sum.
package tools

import (
	_ "github.com/coredns/coredns"
)
