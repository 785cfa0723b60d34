// avgpool2d.cu — average pooling forward and backward (a gather, no atomics).
//
// Math (gpucnn/ops/reference.py::avgpool2d_forward, ::avgpool2d_backward), no padding, area = size^2:
//   forward   a[n,c,y,x] = (1/area) sum_{i,j < size} x[n, c, y*s + i, x*s + j],  oh = (h - size) / s + 1
//   backward  da_prev[n,c,r,q] = sum over the windows (y, x) that contain (r, q) of delta[n,c,y,x] / area;
//             0 for an input no window covers (h - size not a multiple of s). Every input of a window
//             gets the same share: da/da_prev = 1/area, no tie rule needed.
//
// Layout: contiguous, row-major. x, da_prev (n, c, h, w) float32; a, delta (n, c, oh, ow) float32.
//
// Thread mapping: forward, one thread per output (n, c, y, x), summing its window in row-major order;
//   backward, one thread per input (n, c, r, q) that gathers from the at most ceil(size/s)^2 windows
//   covering it. Flat thread index in memory order in both, so warps write consecutive addresses. The
//   backward adds delta / area (an IEEE division, as NumPy's) in ascending tap order k = i*size + j
//   (descending window y, then x): the reference's order, so it is bitwise equal to the reference even
//   when windows overlap (stride < size).
//
// Launch rule (gpucnn/ops/cuda.py::launch_config, "thread"): block = (256,),
//   grid = (ceil(n*c*oh*ow / 256),) forward, (ceil(n*c*h*w / 256),) backward.
//
// Versions:
//   v1  direct, one thread per output (forward) / per input (backward).

extern "C" __global__ void avgpool2d_forward(
    float* a,              // (n, c, oh, ow)
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
    float sum = 0.0f;
    for (int i = 0; i < size; ++i)
        for (int j = 0; j < size; ++j)
            sum += window[i * w + j];
    a[t] = sum / (float)(size * size);
}

extern "C" __global__ void avgpool2d_backward(
    float* da_prev,        // (n, c, h, w)
    const float* delta,    // (n, c, oh, ow)
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
    float area = (float)(size * size);
    float sum = 0.0f;
    for (int oy = y_hi; oy >= y_lo; --oy)            // descending window = ascending tap i
        for (int ox = x_hi; ox >= x_lo; --ox)
            sum += delta_nc[oy * ow + ox] / area;
    da_prev[t] = sum;
}
