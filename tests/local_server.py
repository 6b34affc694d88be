"""A loopback HTTP server for client tests: 127.0.0.1 only, stops by itself after ``lifetime`` s."""
import contextlib
import threading
from http.server import ThreadingHTTPServer


@contextlib.contextmanager
def serve(handler, lifetime: float = 60.0, **attrs):
    """Start ``handler`` on 127.0.0.1:<free port>; ``attrs`` become server attributes the handler
    reads (counters, modes). Yields the server with ``.url`` = "http://127.0.0.1:<port>/v1"."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for k, v in attrs.items():
        setattr(srv, k, v)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    stopper = threading.Timer(lifetime, srv.shutdown)  # stops by itself even if a test hangs
    stopper.daemon = True
    stopper.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        yield srv
    finally:
        stopper.cancel()
        srv.shutdown()
        srv.server_close()
