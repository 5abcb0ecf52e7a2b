"""Names of the environment a pool's primary gives its workers (``rcluster.pool`` sets them,
``rcluster._pool_worker`` reads them; the worker module itself is not imported by the package,
since it runs as ``python -m``)."""

#: The primary's ``sys.path``, pickled, base64.
PATH = "RCLUSTER_POOL_SYS_PATH"
#: The primary's main script (its file), to import as ``__mp_main__``.
MAIN_PATH = "RCLUSTER_POOL_MAIN_PATH"
#: The primary's main module when it was run with ``-m``.
MAIN_NAME = "RCLUSTER_POOL_MAIN_NAME"
#: The pickled ``(initializer, initargs)``, base64.
INIT = "RCLUSTER_POOL_INIT"
