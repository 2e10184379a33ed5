"""Local deploys: the real Pulumi engine on the `local` stack through the Automation API."""
