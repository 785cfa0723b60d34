// good.cu — small correct kernels the emulator tests run under every schedule.
//   vadd          out[i] = a[i] + b[i]                       one thread per element
//   block_sum     out[b] = sum of x over block b             static __shared__ tree reduction
//   warp_sum      *out  += sum of x                          __shfl_down/xor_sync + extern __shared__
//   scale_dynamic out[i] = x[n-1-i] * 2 within one block     extern __shared__ sized by the host
//   histogram     counts[x[i] % nbins] += 1                  shared + global atomicAdd
//   ballot_count  out[w] = number of positive x in warp w    __ballot_sync, __popc
//   flush_probe   out = a * b, a + a (subnormals flush, as under -ftz=true)
//   vector_tail   float4 loads of x's body, scalar tail; addresses mod 256 of every argument

extern "C" __global__ void vadd(float* out, const float* a, const float* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// launch: block = 256 (a power of two), grid = ceil(n / 256)
extern "C" __global__ void block_sum(float* out, const float* x, int n) {
    __shared__ float s[256];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// launch: block = multiple of 32, shared_mem = block / 32 floats; *out must start at 0
extern "C" __global__ void warp_sum(float* out, const float* x, int n) {
    extern __shared__ float partial[];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((t & 31) == 0) partial[t >> 5] = v;
    __syncthreads();
    if (t < 32) {
        v = t < (int)(blockDim.x / 32) ? partial[t] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (t == 0) atomicAdd(out, v);
    }
}

// launch: one block of n threads, shared_mem = n floats
extern "C" __global__ void scale_dynamic(float* out, const float* x, int n) {
    extern __shared__ float buf[];
    int t = threadIdx.x;
    buf[t] = 2.0f * x[t];
    __syncthreads();
    out[t] = buf[n - 1 - t];
}

// launch: any grid; counts (nbins ints) must start at 0; nbins <= 64
extern "C" __global__ void histogram(int* counts, const int* x, int n, int nbins) {
    __shared__ int local[64];
    int t = threadIdx.x;
    for (int k = t; k < nbins; k += blockDim.x) local[k] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + t; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&local[x[i] % nbins], 1);
    __syncthreads();
    for (int k = t; k < nbins; k += blockDim.x) atomicAdd(&counts[k], local[k]);
}

// launch: block = multiple of 32, n = grid * block
extern "C" __global__ void ballot_count(int* out, const float* x) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned votes = __ballot_sync(0xffffffffu, x[i] > 0.0f);
    if ((threadIdx.x & 31) == 0) out[i / 32] = __popc(votes);
}

// out (2, n): out[0] = a * b, out[1] = a + a; one thread per element
extern "C" __global__ void flush_probe(float* out, const float* a, const float* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = a[i] * b[i];
        out[n + i] = a[i] + a[i];
    }
}

// x has n floats (n not a multiple of 4): sum[0] = the sum of x, its first n/4*4 by float4 loads,
// which need x 16-byte aligned; where[0..1] = the addresses of sum and x modulo 256. One thread.
extern "C" __global__ void vector_tail(float* sum, int* where, const float* x, int n) {
    const float4* body = reinterpret_cast<const float4*>(x);
    float s = 0.0f;
    for (int k = 0; k < n / 4; ++k) s += body[k].x + body[k].y + body[k].z + body[k].w;
    for (int k = n / 4 * 4; k < n; ++k) s += x[k];
    sum[0] = s;
    where[0] = (int)((unsigned long long)sum % 256);
    where[1] = (int)((unsigned long long)x % 256);
}
