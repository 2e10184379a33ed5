//go:build tools

// Package tools pins the Go programs the test suite builds from source:
// promtool (Prometheus's rule checker and rule unit-test runner).
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
