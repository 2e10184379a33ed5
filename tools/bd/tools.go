//go:build tools

// Package tools pins the Go programs the test suite builds from source:
// bd (the beads CLI, at the version the production image ships).
package tools

import (
	_ "github.com/steveyegge/beads/cmd/bd"
)
