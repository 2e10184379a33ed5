"""The Pulumi program rendered under Pulumi's mocks, and written out as Kubernetes YAML."""
