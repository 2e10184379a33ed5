"""Run the jobs as local processes: a rendered CronJob's container, `python -m jobs` itself, or
every pod a local cluster binds to the executor's Node (executor.py, a kubelet stand-in)."""
