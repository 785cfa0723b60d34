// maxpool2d.cu — max pooling forward (value + argmax) and backward (a gather, no atomics).
//
// Math (gpucnn/ops/reference.py::maxpool2d_forward, ::maxpool2d_backward), no padding:
//   forward   a[n,c,y,x] = max_{i,j < size} x[n, c, y*s + i, x*s + j],  oh = (h - size) / s + 1
//             argmax[n,c,y,x] = i*size + j of the FIRST maximum in row-major window order (NumPy's
//             np.argmax rule; a NaN counts as the maximum, as in NumPy). Ties are common on real digits
//             (blank background), and exactly one input must receive each delta. Values are compared
//             and written flushed (reference.py::flush_subnormals: a subnormal is the zero of its
//             sign), by the bits, so the result is the same with -ftz=true (CuPy's) or without.
//   backward  da_prev[n,c,r,q] = sum of delta[n,c,y,x] over the windows (y, x) that contain (r, q)
//             and whose argmax is (r - y*s)*size + (q - x*s); 0 for every other input.
//
// Layout: contiguous, row-major. x, da_prev (n, c, h, w) float32; a, delta (n, c, oh, ow) float32;
//   argmax (n, c, oh, ow) int32.
//
// Thread mapping: forward, one thread per output (n, c, y, x); backward, one thread per input
//   (n, c, r, q) that gathers from the at most ceil(size/s)^2 windows covering it. Flat thread index in
//   memory order in both, so warps write consecutive addresses. The backward adds its terms in
//   ascending tap order k = i*size + j (descending window y, then x): the reference's order, so the
//   result is bitwise equal to it even when windows overlap (stride < size).
//
// Launch rule (gpucnn/ops/cuda.py::launch_config, "thread"): block = (256,),
//   grid = (ceil(n*c*oh*ow / 256),) forward, (ceil(n*c*h*w / 256),) backward.
//
// Versions:
//   v1  direct, one thread per output (forward) / per input (backward).
//   v2  forward compares flushed values (v1 picked another argmax than -ftz=true code on subnormals).

// A subnormal becomes the zero of its sign, by the bits (the same under -ftz=true or not).
__device__ __forceinline__ float flush(float v)
{
    unsigned int bits = __float_as_uint(v);
    return (bits & 0x7f800000u) == 0u ? __uint_as_float(bits & 0x80000000u) : v;
}

extern "C" __global__ void maxpool2d_forward(
    float* a,              // (n, c, oh, ow)
    int* argmax,           // (n, c, oh, ow)
    const float* x,        // (n, c, h, w)
    int n, int c, int h, int w,
    int oh, int ow,
    int size, int stride)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * c * oh * ow) return;
    int ox = t % ow;
    int oy = (t / ow) % oh;
    int nc = t / (ow * oh);                // n*c + c: x[n, c] is (h, w)

    const float* window = x + (nc * h + oy * stride) * w + ox * stride;
    float best = flush(window[0]);
    int best_k = 0;
    for (int i = 0; i < size; ++i) {
        for (int j = 0; j < size; ++j) {
            float v = flush(window[i * w + j]);
            // Strictly greater keeps the first maximum; v != v is NaN, which wins once, like NumPy.
            if (v > best || (v != v && best == best)) {
                best = v;
                best_k = i * size + j;
            }
        }
    }
    a[t] = best;
    argmax[t] = best_k;
}

extern "C" __global__ void maxpool2d_backward(
    float* da_prev,        // (n, c, h, w)
    const float* delta,    // (n, c, oh, ow)
    const int* argmax,     // (n, c, oh, ow)
    int n, int c, int h, int w,
    int oh, int ow,
    int size, int stride)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * c * h * w) return;
    int q = t % w;
    int r = (t / w) % h;
    int nc = t / (w * h);

    // Windows covering row r: y*s <= r < y*s + size, i.e. y in [ceil((r - size + 1) / s), r / s].
    int y_hi = r / stride < oh ? r / stride : oh - 1;
    int x_hi = q / stride < ow ? q / stride : ow - 1;
    int y_lo = r - size + 1 > 0 ? (r - size + stride) / stride : 0;
    int x_lo = q - size + 1 > 0 ? (q - size + stride) / stride : 0;
    const float* delta_nc = delta + nc * oh * ow;
    const int* argmax_nc = argmax + nc * oh * ow;
    float sum = 0.0f;
    for (int oy = y_hi; oy >= y_lo; --oy) {          // descending window = ascending tap i
        for (int ox = x_hi; ox >= x_lo; --ox) {
            int k = (r - oy * stride) * size + (q - ox * stride);
            if (argmax_nc[oy * ow + ox] == k) sum += delta_nc[oy * ow + ox];
        }
    }
    da_prev[t] = sum;
}
