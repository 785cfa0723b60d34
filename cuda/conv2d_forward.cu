// conv2d_forward.cu — 2-D convolution forward with the bias (and optionally the activation) fused.
//
// Math (cross-correlation, as in gpucnn/ops/reference.py::conv2d_forward):
//   z[n,f,y,x] = b[f] + sum_{c,i,j} x[n, c, y*s + i - ph, x*s + j - pw] * W[f,c,i,j]
//   with x = 0 outside the image (zero padding ph, pw), oh = (h + 2*ph - kh) / s + 1 (same for ow),
//   then out = act(z) with the formulas of gpucnn/layers (activations.py): 0 none,
//   1 sigmoid 0.5 * tanh(0.5 z) + 0.5 (= 1 / (1 + exp(-z)) without overflow), 2 relu max(z, 0) (NaN
//   stays NaN, as xp.maximum), 3 tanh.
//
// Layout: every array is contiguous, row-major (C order), float32.
//   x (n, c, h, w)   W (f, c, kh, kw)   b (f,)   out (n, f, oh, ow)
//
// Thread mapping: one thread per output element; the flat thread index t walks out in memory order
//   t = ((n*f + f)*oh + y)*ow + x, so a warp writes consecutive addresses and, at stride 1, reads
//   consecutive addresses of x; all threads of a warp usually share f, so W[f] is a broadcast read.
//   Each thread sums its c*kh*kw taps in the fixed order (c, i, j): the result is deterministic.
//
// Launch rule (gpucnn/ops/cuda.py::launch_config, "thread"): block = (256,),
//   grid = (ceil(n*f*oh*ow / 256),). Sizes must fit in int32 (the host checks).
//
// Versions:
//   v1  direct convolution, one thread per output, bias + activation fused.
//   v2  the layers' sigmoid formula (v1: 1 / (1 + exp(-z))), NaN through relu, tanh added.

#define ACTIVATION_NONE 0
#define ACTIVATION_SIGMOID 1
#define ACTIVATION_RELU 2
#define ACTIVATION_TANH 3

extern "C" __global__ void conv2d_forward(
    float* out,            // (n, f, oh, ow)
    const float* x,        // (n, c, h, w)
    const float* W,        // (f, c, kh, kw)
    const float* b,        // (f,)
    int n, int c, int h, int w,
    int f, int kh, int kw,
    int oh, int ow,
    int stride, int ph, int pw,
    int activation)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * f * oh * ow) return;
    int ox = t % ow;
    int oy = (t / ow) % oh;
    int fi = (t / (ow * oh)) % f;
    int ni = t / (ow * oh * f);

    int y0 = oy * stride - ph;             // top-left corner of the window in unpadded x
    int x0 = ox * stride - pw;
    float z = b[fi];
    for (int ci = 0; ci < c; ++ci) {
        const float* x_nc = x + (ni * c + ci) * h * w;           // x[n, c] is (h, w)
        const float* W_fc = W + (fi * c + ci) * kh * kw;         // W[f, c] is (kh, kw)
        for (int i = 0; i < kh; ++i) {
            int yy = y0 + i;
            if (yy < 0 || yy >= h) continue;                     // zero padding adds nothing
            for (int j = 0; j < kw; ++j) {
                int xx = x0 + j;
                if (xx < 0 || xx >= w) continue;
                z += x_nc[yy * w + xx] * W_fc[i * kw + j];
            }
        }
    }
    if (activation == ACTIVATION_SIGMOID) {
        z = 0.5f * tanhf(0.5f * z) + 0.5f;
    } else if (activation == ACTIVATION_RELU) {
        z = (z > 0.0f || z != z) ? z : 0.0f;
    } else if (activation == ACTIVATION_TANH) {
        z = tanhf(z);
    }
    out[t] = z;
}
