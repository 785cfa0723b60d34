"""The op boundary between the layers and a backend.

Only what has a CUDA kernel goes through an op set; matmul, bias add and activations stay plain
``xp`` code in the layers. Every op set (``reference`` for NumPy, ``gpucnn.ops.cuda.CudaOps`` for
CuPy and for the emulated CUDA backend) exports exactly these names with the same signatures.
"""
OP_NAMES = (
    "conv2d_forward",          # (x, W, b, stride, padding) -> z
    "conv2d_backward_weight",  # (x, delta, kernel_size, stride, padding) -> dW
    "conv2d_backward_bias",    # (delta) -> db
    "conv2d_backward_input",   # (delta, W, x_shape, stride, padding) -> da_prev
    "maxpool2d_forward",       # (x, size, stride) -> (a, argmax)
    "maxpool2d_backward",      # (delta, argmax, x_shape, size, stride) -> da_prev
    "avgpool2d_forward",       # (x, size, stride) -> a
    "avgpool2d_backward",      # (delta, x_shape, size, stride) -> da_prev
)
