// conv2d_backward_weight.cu — the conv weight and bias gradients: sums over batch x output positions.
//
// Math (gpucnn/ops/reference.py::conv2d_backward_weight, ::conv2d_backward_bias):
//   dW[f,c,i,j] = sum_{n,y,x} x[n, c, y*s + i - ph, x*s + j - pw] * delta[n,f,y,x]   (x = 0 outside)
//   db[f]       = sum_{n,y,x} delta[n,f,y,x]
//
// Layout: contiguous, row-major, float32.
//   x (n, c, h, w)   delta (n, f, oh, ow)   dW (f, c, kh, kw)   db (f,)
//
// Thread mapping: one block per output element (dW: one per (f, c, i, j); db: one per f). The block's
//   m = n*oh*ow terms are split by a fixed rule: thread t sums terms t, t + T, t + 2T, ... in that order
//   (T = REDUCE_THREADS), so a warp reads consecutive delta (and, at stride 1, consecutive x). Then
//   block_sum adds the T partial sums as a fixed binary tree: shared memory down to one warp, warp
//   shuffles for the last 32. No atomics and an order that depends only on the sizes, so the same
//   inputs give bitwise-identical gradients on every run and every GPU of the same architecture.
//
// Launch rule (gpucnn/ops/cuda.py::launch_config, "block"): block = (REDUCE_THREADS,) = (256,),
//   grid = (f*c*kh*kw,) for dW and (f,) for db; no dynamic shared memory. The host's REDUCE_THREADS must
//   equal the #define below (a test checks it); the kernels compute nothing when blockDim differs.
//
// Versions:
//   v1  one block per output element, per-thread strided partial sums, shared-memory + shuffle tree.

#define REDUCE_THREADS 256     // a power of two >= 64: the tree halves it down to one warp
#define WARP 32

// Sum of v over the block, in a fixed tree order; every thread must call it. The result is valid in
// thread 0 only. s is the block's __shared__ scratch of REDUCE_THREADS floats.
__device__ float block_sum(float v, float* s)
{
    int t = threadIdx.x;
    s[t] = v;
    __syncthreads();
    for (int half = REDUCE_THREADS / 2; half >= WARP; half /= 2) {
        if (t < half) s[t] = s[t] + s[t + half];
        __syncthreads();
    }
    if (t < WARP) {                        // the last warp: s[0..31] -> one value, by shuffles
        v = s[t];
        for (int offset = WARP / 2; offset > 0; offset /= 2) {
            v += __shfl_down_sync(0xffffffffu, v, offset);
        }
    }
    return v;
}

extern "C" __global__ void conv2d_backward_weight(
    float* dW,             // (f, c, kh, kw)
    const float* x,        // (n, c, h, w)
    const float* delta,    // (n, f, oh, ow)
    int n, int c, int h, int w,
    int f, int kh, int kw,
    int oh, int ow,
    int stride, int ph, int pw)
{
    __shared__ float s[REDUCE_THREADS];
    if (blockDim.x != REDUCE_THREADS) return;
    int out = blockIdx.x;                  // flat index into dW: ((f*c + c)*kh + i)*kw + j
    if (out >= f * c * kh * kw) return;    // uniform per block: no thread reaches a barrier alone
    int j = out % kw;
    int i = (out / kw) % kh;
    int ci = (out / (kw * kh)) % c;
    int fi = out / (kw * kh * c);

    int plane = oh * ow;
    float partial = 0.0f;
    for (int m = threadIdx.x; m < n * plane; m += REDUCE_THREADS) {
        int ni = m / plane;
        int oy = (m % plane) / ow;
        int ox = m % ow;
        int yy = oy * stride + i - ph;
        int xx = ox * stride + j - pw;
        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;   // a padding zero adds nothing
        partial += x[((ni * c + ci) * h + yy) * w + xx] * delta[(ni * f + fi) * plane + oy * ow + ox];
    }
    float total = block_sum(partial, s);
    if (threadIdx.x == 0) dW[out] = total;
}

extern "C" __global__ void conv2d_backward_bias(
    float* db,             // (f,)
    const float* delta,    // (n, f, oh, ow)
    int n, int f, int oh, int ow)
{
    __shared__ float s[REDUCE_THREADS];
    if (blockDim.x != REDUCE_THREADS) return;
    int fi = blockIdx.x;
    if (fi >= f) return;                   // uniform per block

    int plane = oh * ow;
    float partial = 0.0f;
    for (int m = threadIdx.x; m < n * plane; m += REDUCE_THREADS) {
        int ni = m / plane;
        partial += delta[(ni * f + fi) * plane + m % plane];
    }
    float total = block_sum(partial, s);
    if (threadIdx.x == 0) db[fi] = total;
}
