// Command pulumi-resource-kubernetes is the Pulumi Kubernetes resource provider plugin,
// built from the exported API of github.com/pulumi/pulumi-kubernetes/provider/v4 (the
// version ../../go.mod selects).
//
// provider.Serve needs the provider's Pulumi package schema and its Terraform mapping as
// bytes. Both files ship in the provider module, in its cmd/pulumi-resource-kubernetes
// directory; tools/build-pulumi.sh passes them to `go build -overlay` as schema.json and
// terraform-mapping.json of this package, so they are embedded without ever being stored
// in this repository. The release number comes from -ldflags
// "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=<release>".
package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema.json
var schema []byte

//go:embed terraform-mapping.json
var terraformMapping []byte

func main() {
	if version.Version == "" {
		fmt.Fprintln(os.Stderr, "pulumi-resource-kubernetes: built without a version (-ldflags -X .../pkg/version.Version=<release>)")
		os.Exit(1)
	}
	stamped, err := stampVersion(schema, version.Version)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-resource-kubernetes: embedded schema: %v\n", err)
		os.Exit(1)
	}
	provider.Serve("kubernetes", version.Version, stamped, terraformMapping)
}

// stampVersion sets the schema's top-level "version": the module's schema.json has none,
// and the engine (`pulumi package info`, SDK generation) reads the plugin's version there.
// Only the top level is decoded; every other member is passed through untouched.
func stampVersion(doc []byte, release string) ([]byte, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(doc, &members); err != nil {
		return nil, err
	}
	quoted, err := json.Marshal(release)
	if err != nil {
		return nil, err
	}
	members["version"] = quoted
	return json.Marshal(members)
}
