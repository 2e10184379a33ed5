"""Run the jobs as local processes: a rendered CronJob's container, or `python -m jobs` itself."""
