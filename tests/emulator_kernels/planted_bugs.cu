// planted_bugs.cu — kernels with one deliberate bug each; tests/test_emulator.py checks that the
// emulator catches every one. Never copy these.

// BUG: no __syncthreads inside the loop. Thread t reads s[t + h] before thread t + h has added
// into it: wrong in ascending and random order, right by luck in descending order (each thread
// reads only higher threads, which already ran to the end).
extern "C" __global__ void block_sum_missing_sync(float* out, const float* x) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// BUG: every thread does a non-atomic read-modify-write of s[0]. A fiber runs uninterrupted
// between barriers, so every order gives the right sum; only ThreadSanitizer sees the race.
extern "C" __global__ void racy_shared_sum(float* out, const float* x) {
    __shared__ float s[1];
    if (threadIdx.x == 0) s[0] = 0.0f;
    __syncthreads();
    s[0] += x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// BUG: thread 0 of every block adds into out[0] without an atomic: a race between blocks
// (ThreadSanitizer with >= 2 workers).
extern "C" __global__ void racy_between_blocks(float* out, const float* x) {
    if (threadIdx.x == 0) out[0] += x[blockIdx.x];
}

// BUG: `<=` where `<` belongs: the thread with i == n writes one element past the end.
extern "C" __global__ void off_by_one(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

// Correct kernel; the planted bug is in the host: shared_mem smaller than blockDim.x floats.
extern "C" __global__ void reverse_in_shared(float* out, const float* x) {
    extern __shared__ float buf[];
    int t = threadIdx.x;
    buf[t] = x[t];
    __syncthreads();
    out[t] = buf[blockDim.x - 1 - t];
}

// BUG: __syncthreads reached by half of the block only.
extern "C" __global__ void divergent_sync(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// BUG: lane 0 waits in a shuffle for lanes that wait at __syncthreads for lane 0.
extern "C" __global__ void shuffle_deadlock(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
    else __syncthreads();
    out[threadIdx.x] = v;
}

// BUG: lanes 16..31 return early, yet the shuffle's mask still names them.
extern "C" __global__ void shuffle_exited_lane(float* out, const float* x) {
    int t = threadIdx.x;
    if (t >= 16) return;
    float v = x[t];
    for (int o = 8; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (t == 0) out[0] = v;
}
