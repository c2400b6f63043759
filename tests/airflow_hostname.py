"""`[core] hostname_callable` for tests/test_distributed.py: the two Celery workers run on one machine,
so each reports the name in RAGPIPE_TEST_WORKER as its hostname, as two machines would differ."""

import os
import socket


def hostname() -> str:
    return os.environ.get("RAGPIPE_TEST_WORKER") or socket.getfqdn()
