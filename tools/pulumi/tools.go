//go:build tools

// Package tools pins the Pulumi CLI (main package
// github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) for tools/build-pulumi.sh.
// Build with:
//
//	go build -trimpath -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v<ver>" \
//	    -o "$TOOLS_CACHE/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
package tools

import (
	_ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
)
