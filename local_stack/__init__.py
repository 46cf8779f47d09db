"""Local mode: the compose topology as local processes, for machines without Docker.

The model server, N gunicorn instances per API service and the real nginx, started from the
same files compose uses (compose.yaml, the gunicorn configs, the nginx template, models.config),
restarted when they crash the way `restart: unless-stopped` would, stopped cleanly on Ctrl-C.
"""
