"""One way for tests to run a real server on 127.0.0.1 and to wait until its engine is idle."""

import contextlib
import time

from la_edge import Aligner
from la_edge.faces.server import BackgroundServer, Server


@contextlib.contextmanager
def running_server(model_path, model_name="smollm2", server_kw=None, **load):
    """An Aligner behind a real HTTP server; `srv.base` is its URL, `srv.la` the Aligner."""
    la = Aligner.load(model_path, **load)
    try:
        srv = Server(la, model_name=model_name, **(server_kw or {}))
        http = BackgroundServer(srv)
        srv.base = http.base_url
        try:
            yield srv
        finally:
            http.stop()
    finally:
        la.close()


def wait_idle(la, timeout=20):
    """True once nothing runs or waits and every KV sequence in use is one the prompt cache holds."""
    end = time.time() + timeout
    while time.time() < end:
        s = la.status()
        if s["active"] == 0 and s["queued"] == 0 and la.engine.leaked_sequences() == []:
            return True
        time.sleep(0.05)
    return False
