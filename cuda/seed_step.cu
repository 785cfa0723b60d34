// seed_step.cu — the seed family's whole SGD training step in three launches, no atomics.
//
// Math (the layer-by-layer path it must equal: gpucnn/layers.py, losses.py, optim.py, and
// gpucnn/ops/reference.py for conv and pooling). For sample x (H_IN, W_IN) of a batch of nb:
//   z1[f,y,x] = sum_{i,j} x[y+i, x+j] W1[f,i,j] + b1[f]         conv, 1 input channel, stride 1, no pad
//   a1 = act(z1)        sigmoid 0.5*tanh(0.5 z) + 0.5 | relu max(z, 0) | tanh   (ACT 1 | 2 | 3)
//   a2[f,p,q], am = max / first argmax of the POOL x POOL window (stride POOL) of a1, compared on
//                  flushed values (a subnormal counts as a zero of its sign, the value is flushed)
//   z2 = W2 a2 + b2 (a2 flattened (f, p, q) row-major, D of them), out = act_out(z2) (OUT_ACT 0: none)
//   loss  quadratic (LOSS 0):     C = 1/nb sum 1/2 |out - y|^2,   dC/dout = (out - y) / nb
//         cross-entropy (LOSS 1): C = -1/nb sum log softmax(out)_y, dC/dout = (softmax(out) - y) / nb
//   delta2 = dC/dout * act_out'(out)                              (BP1)
//   dW2 = delta2 a2^T, db2 = delta2                               (BP3, BP4 of the dense layer)
//   da2 = W2^T delta2; delta1 = route(da2 to am) * act'(a1)        (BP2 through the pool)
//   dW1[f,i,j] = sum_{y,x} x[y+i, x+j] delta1[f,y,x], db1[f] = sum_{y,x} delta1[f,y,x]
// then the SGD update of gpucnn/optim.py (PyTorch's rule): g = sum_b dW_b + wd*W;
// v = momentum*v + g (v starts at 0, so the first step is v = g bitwise); W -= lr*v (no v when
// momentum == 0). The batch cost and the count of correct predictions (first argmax of out equals
// the first argmax of y) are kept on the device, one entry per step.
//
// Layout: contiguous, row-major, float32 unless said.
//   x (n_train, H_IN, W_IN)   y (n_train, CLASSES) one-hot rows   order (n_train,) int32
//   W1 (F, K, K) b1 (F,) W2 (CLASSES, D) b2 (CLASSES,): the layers' live arrays, updated in place
//   partials (BATCH, N_PARAMS): sample b's gradient terms, parameters packed as W1 | b1 | W2 | b2
//   sample_stats (BATCH, 2): sample b's cost term 1/2|out - y|^2 (or -log p_y) and 1.0 if correct
//   velocity, previous (N_PARAMS,): the momentum buffer; the parameters before the last update
//   state (STATE_SIZE,) int32: [0] step = the next step of the epoch, [1] nb of the step being run,
//     [2] first non-finite step + 1 (0: none; from then on nothing is updated), [3] updates done
//   step_cost (steps,) float32 batch-mean cost, step_correct (steps,) int32, per step of the epoch
// Sizes are compile-time constants (NVRTC -D options from gpucnn/gpu_step.py): H_IN, W_IN, K, F,
//   POOL, CLASSES, BATCH, THREADS, ACT, OUT_ACT, LOSS. Every division below is by a constant.
//
// Thread mapping:
//   seed_step_sample  one block per sample of the batch (block b takes order[step*BATCH + b]); the
//     sample, z/a of every layer and the deltas stay in shared memory. Elementwise stages: thread t
//     takes elements t, t + THREADS, ...; the dense forward and the conv dW/db: one warp per output,
//     lane l sums terms l, l + 32, ... in that order, then a fixed shuffle tree (lane 0's value).
//   seed_step_stats   one thread: sums the nb sample costs and correct flags in ascending b.
//   seed_step_update  one thread per parameter: sums the nb partials in ascending b, then SGD.
//   No atomics and orders fixed by the sizes: the same inputs give the same bits on every run.
//
// Launch rule (gpucnn/gpu_step.py::GpuStep.launches), in this order on one stream, per step:
//   seed_step_sample  grid (BATCH,), block (THREADS,); blocks past the epoch's last sample return
//   seed_step_stats   grid (1,), block (1,)
//   seed_step_update  grid (ceil(N_PARAMS / THREADS),), block (THREADS,)
// The step number lives on the device (state[0], advanced by seed_step_stats), so the same three
// launches, with the same arguments, run every step: one captured CUDA graph serves the epoch.
//
// Versions:
//   v1  one block per sample, shared-memory sample, warp-per-output reductions, serial batch sums.

#ifndef H_IN
#error "seed_step.cu needs -DH_IN=.. -DW_IN=.. -DK=.. -DF=.. -DPOOL=.. -DCLASSES=.. -DBATCH=.. ..."
#endif

#define OH (H_IN - K + 1)
#define OW (W_IN - K + 1)
#define PH (OH / POOL)
#define PW (OW / POOL)
#define CONV_N (F * OH * OW)               // z1, a1, delta1 per sample
#define D (F * PH * PW)                    // the flattened pool output = the dense layer's input
#define OFF_B1 (F * K * K)
#define OFF_W2 (OFF_B1 + F)
#define OFF_B2 (OFF_W2 + CLASSES * D)
#define N_PARAMS (OFF_B2 + CLASSES)
#define WARP 32
#define WARPS (THREADS / WARP)
#define STATE_SIZE 4

#define ACT_NONE 0
#define ACT_SIGMOID 1
#define ACT_RELU 2
#define ACT_TANH 3
#define LOSS_QUADRATIC 0
#define LOSS_CROSS_ENTROPY 1

template <int A> __device__ __forceinline__ float activate(float z)
{
    if (A == ACT_SIGMOID) return 0.5f * tanhf(0.5f * z) + 0.5f;   // = layers.Sigmoid.sigma
    if (A == ACT_RELU) return (z > 0.0f || z != z) ? z : 0.0f;     // max(z, 0); NaN stays NaN
    if (A == ACT_TANH) return tanhf(z);
    return z;
}

// sigma'(z) from a = sigma(z), as the layers compute it.
template <int A> __device__ __forceinline__ float activate_prime(float a)
{
    if (A == ACT_SIGMOID) return a * (1.0f - a);
    if (A == ACT_RELU) return a > 0.0f ? 1.0f : 0.0f;               // z > 0 exactly when a > 0
    if (A == ACT_TANH) return 1.0f - a * a;
    return 1.0f;
}

// A subnormal becomes the zero of its sign, by the bits (the same under -ftz=true or not).
__device__ __forceinline__ float flush(float v)
{
    unsigned int bits = __float_as_uint(v);
    return (bits & 0x7f800000u) == 0u ? __uint_as_float(bits & 0x80000000u) : v;
}

__device__ __forceinline__ bool is_finite(float v)
{
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

// Sum over the 32 lanes of a warp, a fixed shuffle tree; the result is valid in lane 0.
__device__ __forceinline__ float warp_sum(float v)
{
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// The loss at the output, by the first CLASSES threads and thread 0: delta2, the cost, correct.
__device__ void output_delta(float* delta2, float* stats, const float* z2, float* out,
                             const float* ys, int nb)
{
    int t = threadIdx.x;
    if (t < CLASSES) out[t] = activate<OUT_ACT>(z2[t]);
    __syncthreads();
    if (t == 0) {
        float cost = 0.0f;
        int pred = 0, label = 0;
        for (int j = 1; j < CLASSES; ++j) {          // first maximum, as argmax
            if (out[j] > out[pred]) pred = j;
            if (ys[j] > ys[label]) label = j;
        }
        if (LOSS == LOSS_QUADRATIC) {
            for (int j = 0; j < CLASSES; ++j) {
                float diff = out[j] - ys[j];
                cost += diff * diff;
                delta2[j] = (diff / (float)nb) * activate_prime<OUT_ACT>(out[j]);
            }
            cost = 0.5f * cost;
        } else {
            float top = out[0], total = 0.0f;
            for (int j = 1; j < CLASSES; ++j) top = out[j] > top ? out[j] : top;
            for (int j = 0; j < CLASSES; ++j) total += expf(out[j] - top);
            float log_total = logf(total);
            for (int j = 0; j < CLASSES; ++j) {
                float shifted = out[j] - top;
                cost -= (shifted - log_total) * ys[j];
                float p = expf(shifted) / total;
                delta2[j] = ((p - ys[j]) / (float)nb) * activate_prime<OUT_ACT>(out[j]);
            }
        }
        stats[0] = cost;
        stats[1] = pred == label ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void seed_step_sample(
    float* partials,           // (BATCH, N_PARAMS)
    float* sample_stats,       // (BATCH, 2)
    const float* x,            // (n_train, H_IN, W_IN)
    const float* y,            // (n_train, CLASSES)
    const int* order,          // (n_train,)
    const int* state,          // (STATE_SIZE,)
    const float* W1,           // (F, K, K)
    const float* b1,           // (F,)
    const float* W2,           // (CLASSES, D)
    const float* b2,           // (CLASSES,)
    int n_train)
{
    __shared__ float xs[H_IN * W_IN];
    __shared__ float a1[CONV_N];         // a1, then delta1 in place
    __shared__ float a2[D];
    __shared__ float da2[D];
    __shared__ int am[D];
    __shared__ float ys[CLASSES], z2[CLASSES], out[CLASSES], delta2[CLASSES];

    int t = threadIdx.x, b = blockIdx.x;
    int start = state[0] * BATCH;
    int nb = n_train - start < BATCH ? n_train - start : BATCH;
    if (blockDim.x != THREADS || b >= nb || state[2] != 0) return;   // uniform per block
    int sample = order[start + b];
    const float* xg = x + (long long)sample * (H_IN * W_IN);
    for (int e = t; e < H_IN * W_IN; e += THREADS) xs[e] = xg[e];
    if (t < CLASSES) ys[t] = y[(long long)sample * CLASSES + t];
    __syncthreads();

    for (int e = t; e < CONV_N; e += THREADS) {                     // conv + activation
        int f = e / (OH * OW), oy = (e % (OH * OW)) / OW, ox = e % OW;
        const float* wf = W1 + f * K * K;
        const float* xp = xs + oy * W_IN + ox;
        float z = 0.0f;
#pragma unroll
        for (int i = 0; i < K; ++i)
#pragma unroll
            for (int j = 0; j < K; ++j) z += xp[i * W_IN + j] * wf[i * K + j];
        a1[e] = activate<ACT>(z + b1[f]);
    }
    __syncthreads();

    for (int e = t; e < D; e += THREADS) {                          // max-pool, first maximum
        int f = e / (PH * PW), py = (e % (PH * PW)) / PW, px = e % PW;
        const float* win = a1 + f * (OH * OW) + py * POOL * OW + px * POOL;
        float best = flush(win[0]);
        int best_k = 0;
#pragma unroll
        for (int i = 0; i < POOL; ++i)
#pragma unroll
            for (int j = 0; j < POOL; ++j) {
                float v = flush(win[i * OW + j]);
                if (v > best || (v != v && best == best)) { best = v; best_k = i * POOL + j; }
            }
        a2[e] = best;
        am[e] = best_k;
    }
    __syncthreads();

    int lane = t % WARP, warp = t / WARP;
    for (int j = warp; j < CLASSES; j += WARPS) {                   // z2 = W2 a2 + b2
        float s = 0.0f;
        for (int k = lane; k < D; k += WARP) s += a2[k] * W2[j * D + k];
        s = warp_sum(s);
        if (lane == 0) z2[j] = s + b2[j];
    }
    __syncthreads();
    output_delta(delta2, sample_stats + 2 * b, z2, out, ys, nb);
    __syncthreads();

    float* part = partials + (long long)b * N_PARAMS;
    for (int e = t; e < CLASSES * D; e += THREADS) part[OFF_W2 + e] = delta2[e / D] * a2[e % D];
    if (t < CLASSES) part[OFF_B2 + t] = delta2[t];
    for (int k = t; k < D; k += THREADS) {                          // da2 = W2^T delta2
        float s = 0.0f;
        for (int j = 0; j < CLASSES; ++j) s += delta2[j] * W2[j * D + k];
        da2[k] = s;
    }
    __syncthreads();

    for (int e = t; e < CONV_N; e += THREADS) {                     // delta1 = route(da2) * act'
        int f = e / (OH * OW), oy = (e % (OH * OW)) / OW, ox = e % OW;
        int py = oy / POOL, px = ox / POOL;
        float routed = 0.0f;
        if (py < PH && px < PW) {
            int k = f * (PH * PW) + py * PW + px;
            if (am[k] == (oy - py * POOL) * POOL + (ox - px * POOL)) routed = da2[k];
        }
        a1[e] = routed * activate_prime<ACT>(a1[e]);
    }
    __syncthreads();

    for (int o = warp; o < OFF_W2; o += WARPS) {                    // dW1 (o < OFF_B1), db1
        float s = 0.0f;
        if (o < OFF_B1) {
            int f = o / (K * K), i = (o % (K * K)) / K, j = o % K;
            const float* d = a1 + f * (OH * OW);
            const float* xp = xs + i * W_IN + j;
            for (int m = lane; m < OH * OW; m += WARP) s += xp[(m / OW) * W_IN + m % OW] * d[m];
        } else {
            const float* d = a1 + (o - OFF_B1) * (OH * OW);
            for (int m = lane; m < OH * OW; m += WARP) s += d[m];
        }
        s = warp_sum(s);
        if (lane == 0) part[o] = s;
    }
}

extern "C" __global__ void seed_step_stats(
    int* state,                // (STATE_SIZE,)
    float* step_cost,          // (steps,)
    int* step_correct,         // (steps,)
    const float* sample_stats, // (BATCH, 2)
    int n_train)
{
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    int step = state[0], start = step * BATCH;
    int nb = n_train - start < BATCH ? n_train - start : BATCH;
    state[1] = nb > 0 ? nb : 0;
    if (state[2] == 0 && nb > 0) {
        float cost = 0.0f;
        int correct = 0;
        for (int b = 0; b < nb; ++b) {
            cost += sample_stats[2 * b];
            correct += sample_stats[2 * b + 1] != 0.0f;
        }
        cost = cost / (float)nb;
        step_cost[step] = cost;
        step_correct[step] = correct;
        if (!is_finite(cost)) state[2] = step + 1;     // freezes every later update
    }
    state[0] = step + 1;
}

extern "C" __global__ void seed_step_update(
    float* W1, float* b1, float* W2, float* b2,   // the parameters, in place
    float* velocity,           // (N_PARAMS,)
    float* previous,           // (N_PARAMS,)
    int* state,                // (STATE_SIZE,)
    const float* partials,     // (BATCH, N_PARAMS)
    float lr, float momentum, float weight_decay)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    int nb = state[1];
    if (p >= N_PARAMS || state[2] != 0 || nb <= 0) return;
    float g = 0.0f;
    for (int b = 0; b < nb; ++b) g += partials[(long long)b * N_PARAMS + p];
    float* w = p < OFF_B1 ? W1 + p : p < OFF_W2 ? b1 + (p - OFF_B1)
             : p < OFF_B2 ? W2 + (p - OFF_W2) : b2 + (p - OFF_B2);
    float value = *w;
    previous[p] = value;
    if (weight_decay != 0.0f) g = g + weight_decay * value;
    if (momentum != 0.0f) {
        g = momentum * velocity[p] + g;
        velocity[p] = g;
    }
    *w = value - lr * g;
    if (p == 0) state[3] = state[3] + 1;           // only thread 0 of block 0 touches state[3]
}
