"""The fused GPU training step: the seed family's whole SGD step in three launches (cuda/seed_step.cu).

    step, reason = plan_gpu_step(net, batch_size, optimizer)   # (GpuStep, "fused ...") or (None, why not)
    step.bind(xd, yd)              # the training set, resident on the device: x (n, 1, h, w), one-hot y
    step.start_epoch(order)        # the epoch's permutation, uploaded once; the step counter reset
    for _ in range(step.steps): step.run()                     # no host sync: graph replay or eager
    result = step.read_epoch()     # the one device-to-host read: per-step cost, correct, divergence

The seed family: Conv2D(1, f, k) (stride 1, no padding) -> Sigmoid | ReLU | Tanh -> MaxPool2D(s)
(stride s) -> Flatten -> Dense -> [Sigmoid | ReLU | Tanh]; loss quadratic or cross_entropy; float32;
the cupy or the emulated backend (which runs the same launches through gpucnn.emulator, eagerly).

Why a device step counter: the three launches read the step number from ``state[0]`` (advanced on
the device by seed_step_stats), so their arguments never change and one captured CUDA graph serves
every step of every epoch; a per-step kernel argument would need a graph update (host work) per step.

``GPUCNN_GPU_STEP`` = ``auto`` (graph replay where CuPy can capture, else eager), ``eager`` (the fused
kernels, launched one by one), ``generic`` (no fused step: the layer-by-layer path).
"""
import contextlib

import numpy as np

from .backend import step_setting


SEED_STEP_FILE = "seed_step.cu"
STEP_THREADS = 256                      # = THREADS of seed_step.cu (a -D option, so it cannot drift)
STATE_SIZE = 4                          # = STATE_SIZE of seed_step.cu: step, nb, diverged + 1, updates
MAX_SHARED = 48 * 1024
ACTIVATION_CODES = {"none": 0, "Sigmoid": 1, "ReLU": 2, "Tanh": 3}
LOSS_CODES = {"quadratic": 0, "cross_entropy": 1}
GRAPH_MODE = "fused step, graph replay"


def live_param(layer, name):
    """The layer's live parameter array, updated in place by the step."""
    return layer.params[name].value


def seed_family(net):
    """-> (sizes dict, "") when ``net`` is of the seed family, else (None, the reason in words)."""
    layers, kinds = net.layers, [type(layer).__name__ for layer in net.layers]
    if len(layers) not in (5, 6):
        return None, f"the network has {len(layers)} layers; the seed family has 5 or 6"
    expected = [("Conv2D",), ("Sigmoid", "ReLU", "Tanh"), ("MaxPool2D",), ("Flatten",), ("Dense",),
                ("Sigmoid", "ReLU", "Tanh")]
    for i, (kind, allowed) in enumerate(zip(kinds, expected)):
        if kind not in allowed:
            return None, (f"the network is not of the seed family: layer {i} is {kind}, not "
                          f"{' or '.join(allowed)}")
    conv, pool, dense = layers[0], layers[2], layers[4]
    if conv.in_channels != 1 or conv.stride != 1 or tuple(conv.padding) != (0, 0) \
            or conv.kernel_size[0] != conv.kernel_size[1]:
        return None, (f"layer 0 {conv!r}: the fused step takes 1 input channel, a square kernel, "
                      "stride 1 and no padding")
    if pool.stride != pool.size:
        return None, f"layer 2 {pool!r}: the fused step pools with stride = size"
    if net.loss.name not in LOSS_CODES:
        return None, f"loss {net.loss.name!r} has no fused delta"
    if np.dtype(net.dtype) != np.float32:
        return None, f"dtype {np.dtype(net.dtype)}: the kernels are float32"
    _, h, w = net.input_shape
    k, f = conv.kernel_size[0], conv.out_channels
    oh, ow = h - k + 1, w - k + 1
    d = f * (oh // pool.size) * (ow // pool.size)
    sizes = dict(H_IN=h, W_IN=w, K=k, F=f, POOL=pool.size, CLASSES=dense.out_features,
                 ACT=ACTIVATION_CODES[kinds[1]],
                 OUT_ACT=ACTIVATION_CODES[kinds[5]] if len(kinds) == 6 else 0,
                 LOSS=LOSS_CODES[net.loss.name])
    shared = 4 * (h * w + f * oh * ow + 3 * d + 4 * dense.out_features)
    if shared > MAX_SHARED:
        return None, f"the sample needs {shared} bytes of shared memory, over {MAX_SHARED}"
    return dict(sizes, D=d, N_PARAMS=f * k * k + f + dense.out_features * (d + 1)), ""


def step_defines(sizes, batch_size):
    """The NVRTC -D options of seed_step.cu for these sizes and batch size."""
    names = ("H_IN", "W_IN", "K", "F", "POOL", "CLASSES", "ACT", "OUT_ACT", "LOSS")
    return tuple(f"-D{name}={sizes[name]}" for name in names) + (
        f"-DBATCH={int(batch_size)}", f"-DTHREADS={STEP_THREADS}")


def _fusable(net):
    """-> (GPUCNN_GPU_STEP, the seed family's sizes, None) when the network's step can be fused
    (whatever the optimizer and batch), else (setting, None, why not)."""
    backend = net.backend.name
    if backend not in ("cupy", "emulated"):
        return None, None, f"the {backend} backend has no CUDA kernels"
    setting = step_setting()
    if setting == "generic":
        return setting, None, "GPUCNN_GPU_STEP=generic"
    sizes, reason = seed_family(net)
    return setting, sizes, reason


def _mode(graphs, on_gpu):
    """The fused step's mode, in words, before any capture."""
    if not graphs:
        return "fused step, eager (because GPUCNN_GPU_STEP=eager)"
    if not on_gpu:
        return "fused step, eager (because graph capture is CuPy-only: the emulator runs the same launches eagerly)"
    return GRAPH_MODE                       # until a capture fails (GpuStep.bind says why)


def describe(net):
    """Which training step ``fit`` would run on this network, in words, without compiling anything
    (for ``summary()``): "fused step, graph replay", "fused step, eager (because ...)", or why none."""
    setting, sizes, reason = _fusable(net)
    if setting is None:
        return f"no fused GPU step ({reason})"
    if sizes is None:
        return f"layer by layer on the device ({reason})"
    mode = _mode(setting == "auto", net.backend.name == "cupy")
    return mode + " (eager if the capture fails; fit says which)" if mode == GRAPH_MODE else mode


def plan_gpu_step(net, batch_size, optimizer):
    """-> (GpuStep, its mode) when the step can be fused, else (None, why not)."""
    setting, sizes, reason = _fusable(net)
    if sizes is None:
        return None, reason
    if type(optimizer).__name__ != "SGD":
        return None, f"the fused update is SGD's, not {type(optimizer).__name__}'s"
    if not 1 <= batch_size <= 65535:
        return None, f"batch size {batch_size} is outside 1..65535 (one block per sample)"
    step = GpuStep(net, sizes, batch_size, optimizer, graphs=setting == "auto")
    return step, step.mode


class GpuStep:
    """The fused step of one network, batch size and optimizer, on cupy or emulated."""

    def __init__(self, net, sizes, batch_size, optimizer, graphs=True):
        backend = net.backend
        self.net, self.sizes, self.batch_size, self.optimizer = net, sizes, int(batch_size), optimizer
        self.xp, self.on_gpu = backend.xp, backend.name == "cupy"
        self.kernels = backend.ops.compile_module(SEED_STEP_FILE, step_defines(sizes, batch_size))
        xp, n_params = self.xp, sizes["N_PARAMS"]
        self.slots = [(net.layers[0], "W"), (net.layers[0], "b"), (net.layers[4], "W"), (net.layers[4], "b")]
        self.partials = xp.zeros((self.batch_size, n_params), xp.float32)
        self.sample_stats = xp.zeros((self.batch_size, 2), xp.float32)
        self.velocity = xp.zeros(n_params, xp.float32)
        self.previous = xp.zeros(n_params, xp.float32)
        self.state = xp.zeros(STATE_SIZE, xp.int32)
        self.stream = self._new_stream()
        self.want_graph, self.graph, self.params, self.x = graphs, None, None, None
        self.mode = _mode(graphs, self.on_gpu)
        self.load_velocity()

    # -- device plumbing ----------------------------------------------------------------------------
    def _new_stream(self):
        return self.xp.cuda.Stream(non_blocking=True) if self.on_gpu else None

    def _on_stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def _after_default_stream(self):
        """Order our stream after what the default stream queued (e.g. a parameter assignment)."""
        if self.stream is not None:
            self.stream.wait_event(self.xp.cuda.Stream.null.record())

    def synchronize(self):
        if self.stream is not None:
            self.stream.synchronize()

    # -- parameters and optimizer state -------------------------------------------------------------
    def _offsets(self):
        offsets, start = [], 0
        for layer, name in self.slots:
            size = int(np.prod(layer.param_shapes()[name]))
            offsets.append((start, start + size))
            start += size
        return offsets

    def load_velocity(self):
        """Take the optimizer's velocities (e.g. from a resumed checkpoint) into the packed buffer
        and give the optimizer views of it, so a checkpoint sees the live values."""
        if not self.optimizer.momentum:
            return
        for (layer, name), (lo, hi) in zip(self.slots, self._offsets()):
            view = self.velocity[lo:hi].reshape(layer.param_shapes()[name])
            state = self.optimizer.state.setdefault(layer.params[name].name, {})
            old, state["velocity"] = state.get("velocity"), view    # optimizer.state[param.name]
            if old is not None and old is not view:
                view[...] = self.xp.asarray(old, dtype=self.xp.float32)

    def restore_previous(self):
        """Put back the parameters from before the last update (seed_step_update keeps them)."""
        for (layer, name), (lo, hi) in zip(self.slots, self._offsets()):
            live_param(layer, name)[...] = self.previous[lo:hi].reshape(layer.param_shapes()[name])

    # -- the epoch ----------------------------------------------------------------------------------
    def bind(self, xd, yd):
        """The training set on the device: xd (n, 1, h, w) float32, yd (n, classes) one-hot rows."""
        xp, n = self.xp, int(xd.shape[0])
        self.n, self.steps = n, -(-n // self.batch_size)
        self.x = xp.ascontiguousarray(xd, dtype=xp.float32).reshape(n, -1)
        self.y = xp.ascontiguousarray(yd, dtype=xp.float32)
        self.order = xp.zeros(n, xp.int32)
        self.step_cost = xp.zeros(self.steps, xp.float32)
        self.step_correct = xp.zeros(self.steps, xp.int32)
        self._capture()

    def launches(self):
        """The step's three launches, in stream order: (kernel name, grid, block, args)."""
        p = [live_param(layer, name) for layer, name in self.slots]
        n_train = np.int32(self.n)
        opt = self.optimizer
        return [
            ("seed_step_sample", (self.batch_size,), (STEP_THREADS,),
             (self.partials, self.sample_stats, self.x, self.y, self.order, self.state, *p, n_train)),
            ("seed_step_stats", (1,), (1,),
             (self.state, self.step_cost, self.step_correct, self.sample_stats, n_train)),
            ("seed_step_update", (-(-self.sizes["N_PARAMS"] // STEP_THREADS),), (STEP_THREADS,),
             (*p, self.velocity, self.previous, self.state, self.partials, np.float32(opt.lr),
              np.float32(opt.momentum), np.float32(opt.weight_decay))),
        ]

    def _launch_all(self):
        for name, grid, block, args in self.launches():
            self.kernels[name](grid, block, args)

    def _captured_with(self):
        """What a captured graph holds by value: the parameter arrays and the SGD scalars."""
        opt = self.optimizer
        return [live_param(layer, name) for layer, name in self.slots], (opt.lr, opt.momentum, opt.weight_decay)

    def _capture(self):
        """Capture the three launches once into a CUDA graph (CuPy), or explain why not."""
        self.params, self.hyper = self._captured_with()
        self.graph = None
        if not (self.on_gpu and self.want_graph):
            return
        try:
            with self.stream:
                self.stream.begin_capture()
                try:
                    self._launch_all()
                finally:
                    graph = self.stream.end_capture()
            self.graph, self.mode = graph, GRAPH_MODE
        except Exception as exc:        # an older CuPy, or a driver that refuses the capture
            self.mode = f"fused step, eager (because graph capture failed: {type(exc).__name__}: {exc})"

    def start_epoch(self, order, step=0):
        """Upload the permutation (n,) and set the step counter; no host sync."""
        if self.x is None:
            raise RuntimeError("GpuStep.start_epoch needs bind(xd, yd) first")
        params, hyper = self._captured_with()
        if hyper != self.hyper or any(a is not b for a, b in zip(params, self.params)):
            self._capture()             # a new lr (a schedule) or a replaced parameter array
        self._after_default_stream()
        with self._on_stream():
            self.order[...] = self.xp.asarray(np.asarray(order, dtype=np.int32))
            self.state[:3] = self.xp.asarray(np.array([step, 0, 0], dtype=np.int32))

    def run(self):
        """One training step: a graph replay, or the three launches one by one."""
        if self.graph is not None:
            self.graph.launch(self.stream)
            return
        with self._on_stream():
            self._launch_all()

    def read_epoch(self):
        """The one device-to-host read: -> dict(cost (steps,), correct (steps,), diverged, updates).

        ``diverged`` is the 0-based step of the first non-finite cost, or None; ``cost`` and
        ``correct`` cover the steps before it (those were applied).
        """
        with self._on_stream():
            state = to_host(self.state)
            cost, correct = to_host(self.step_cost), to_host(self.step_correct)
        self.synchronize()
        done = min(int(state[0]), self.steps)
        diverged = int(state[2]) - 1 if state[2] else None
        good = done if diverged is None else diverged
        return {"cost": cost[:good].astype(np.float64), "correct": correct[:good].astype(np.int64),
                "diverged": diverged, "diverged_cost": float(cost[diverged]) if diverged is not None
                else None, "updates": int(state[3]), "steps_run": done}


def to_host(array):
    """A device array -> NumPy: the one device-to-host read the GPU step and engines use."""
    return array.get() if hasattr(array, "get") else np.array(array)
