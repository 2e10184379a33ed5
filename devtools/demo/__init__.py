"""`make demo`: `pulumi up` of the `local` stack, then its rendered CronJobs run here."""
