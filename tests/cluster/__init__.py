"""`pulumi up` into a real Kubernetes API server; the CronJobs run by the real controllers."""
