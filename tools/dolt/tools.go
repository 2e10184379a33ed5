//go:build tools

// Package tools pins dolt (its sql-server backs bd in server mode in the tests) at the
// commit bd 1.0.2 itself embeds, so client and server speak the same storage format.
package tools

import (
	_ "github.com/dolthub/dolt/go/cmd/dolt"
)
