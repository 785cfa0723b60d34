// conv2d_backward_input.cu — the conv input gradient, written as a gather (no atomics).
//
// Math (gpucnn/ops/reference.py::conv2d_backward_input):
//   da_prev[n,c,r,q] = sum_{f,i,j} delta[n,f,y,x] * W[f,c,i,j]
//                      over the taps with r + ph = y*s + i and q + pw = x*s + j, 0 <= y < oh, 0 <= x < ow.
//   At stride 1 this is the full convolution of delta with the flipped kernel. For a row r, the taps i
//   that reach it are i = (r + ph) mod s, + s, + 2s, ... with y = (r + ph - i) / s falling as i grows;
//   rows that no window covers (stride > 1 with a remainder) get 0.
//
// Layout: contiguous, row-major, float32.
//   delta (n, f, oh, ow)   W (f, c, kh, kw)   da_prev (n, c, h, w)
//
// Thread mapping: one thread per da_prev element, t = ((n*c + c)*h + r)*w + q, so a warp writes
//   consecutive addresses and, at stride 1, reads consecutive delta. Each thread gathers its own sum
//   in the fixed order (f, i, j): nothing is shared between threads, the result is deterministic.
//
// Launch rule (gpucnn/ops/cuda.py::launch_config, "thread"): block = (256,),
//   grid = (ceil(n*c*h*w / 256),).
//
// Versions:
//   v1  direct gather, one thread per input element.

extern "C" __global__ void conv2d_backward_input(
    float* da_prev,        // (n, c, h, w)
    const float* delta,    // (n, f, oh, ow)
    const float* W,        // (f, c, kh, kw)
    int n, int c, int h, int w,
    int f, int kh, int kw,
    int oh, int ow,
    int stride, int ph, int pw)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * c * h * w) return;
    int q = t % w;
    int r = (t / w) % h;
    int ci = (t / (w * h)) % c;
    int ni = t / (w * h * c);

    int rp = r + ph;                       // position in the padded input
    int qp = q + pw;
    float sum = 0.0f;
    for (int fi = 0; fi < f; ++fi) {
        const float* delta_nf = delta + (ni * f + fi) * oh * ow;   // delta[n, f] is (oh, ow)
        const float* W_fc = W + (fi * c + ci) * kh * kw;           // W[f, c] is (kh, kw)
        for (int i = rp % stride; i < kh; i += stride) {
            int oy = (rp - i) / stride;
            if (oy < 0) break;             // i > rp: no window this low, nor for larger i
            if (oy >= oh) continue;
            for (int j = qp % stride; j < kw; j += stride) {
                int ox = (qp - j) / stride;
                if (ox < 0) break;
                if (ox >= ow) continue;
                sum += delta_nf[oy * ow + ox] * W_fc[i * kw + j];
            }
        }
    }
    da_prev[t] = sum;
}
