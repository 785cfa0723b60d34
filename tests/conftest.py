"""Shared fixtures: the backend parametrisation and the one tolerance table."""
import http.server
import os
import threading

import numpy as np
import pytest

import gpucnn
from gpucnn.errors import BackendUnavailable

# The suite runs the fused CPU plan strictly: a NumPy float32 network holding a library layer with no
# fused stage (and no stated reason) raises instead of silently taking the slow path.
os.environ.setdefault("GPUCNN_FAST", "strict")

# One tolerance table for the whole suite (STYLE.md): float32 vs the float64/NumPy reference.
TOL = {
    "float32": dict(rtol=1e-4, atol=1e-5),
    "float64": dict(rtol=1e-7, atol=1e-9),
    "gradcheck": 1e-6,      # max relative error, float64 centred differences vs analytic
}


def _available(name):
    try:
        gpucnn.backend.get_backend(name)
        return True
    except (BackendUnavailable, ImportError):
        return False


@pytest.fixture(params=[
    "numpy",
    "emulated",
    pytest.param("cupy", marks=pytest.mark.gpu),
])
def backend_name(request):
    """Every backend that can run here; cupy is skipped cleanly without a GPU."""
    if not _available(request.param):
        pytest.skip(f"backend {request.param!r} not available here")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def digits():
    """The 5,000 real MNIST digits of the offline sample: (x float32 (5000,1,28,28), y int64)."""
    from gpucnn import data
    return data.load_sample()


@pytest.fixture
def server():
    """A local HTTP server: set .files[path] = bytes; .hits counts requests per path."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
            body = srv.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files, srv.hits = {}, {}
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
