// cuda_emu.h — the CUDA-on-CPU header: force-included (g++ -include) before every .cu source.
//
// It gives the kernel the CUDA names it may use without an #include under NVRTC: keywords,
// built-in variables, barriers, warp intrinsics, atomics and the float math the kernels call.
// Two keywords are *not* macros here: `__global__` and `__shared__` survive preprocessing so that
// gpucnn/emulator/_source.py can find the kernels and move every __shared__ variable into
// per-block storage (see __emu_shared_ref below).
#ifndef GPUCNN_CUDA_EMU_H
#define GPUCNN_CUDA_EMU_H

#include "emu_core.h"

#define GPUCNN_EMULATOR 1
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
// __restrict__ is a g++ keyword already.

typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef __INT8_TYPE__ int8_t;
typedef __INT16_TYPE__ int16_t;
typedef __INT32_TYPE__ int32_t;
typedef __INT64_TYPE__ int64_t;
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __UINT32_TYPE__ uint32_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __INTPTR_TYPE__ intptr_t;
typedef __UINTPTR_TYPE__ uintptr_t;

static const int warpSize = 32;

// ---- vector types (layout and alignment as in CUDA's vector_types.h) ----
#define EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
    static __inline__ N make_##N(T x, T y) { return N{x, y}; }
#define EMU_VEC3(T, N) struct N { T x, y, z; }; \
    static __inline__ N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static __inline__ N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
EMU_VEC2(float, float2, 8)   EMU_VEC3(float, float3)   EMU_VEC4(float, float4, 16)
EMU_VEC2(int, int2, 8)       EMU_VEC3(int, int3)       EMU_VEC4(int, int4, 16)
EMU_VEC2(unsigned int, uint2, 8)                       EMU_VEC4(unsigned int, uint4, 16)
EMU_VEC2(double, double2, 16)
static __inline__ uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---- limits and constants (NVRTC predefines these or ships them in its own headers) ----
#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))
#define HUGE_VALF (__builtin_huge_valf())
#define HUGE_VAL (__builtin_huge_val())
#define FLT_MAX 3.402823466e+38F
#define FLT_MIN 1.175494351e-38F
#define FLT_EPSILON 1.192092896e-07F
#define DBL_MAX 1.7976931348623158e+308
#define DBL_MIN 2.2250738585072014e-308
#define DBL_EPSILON 2.2204460492503131e-16
#define INT_MAX 2147483647
#define INT_MIN (-INT_MAX - 1)
#define UINT_MAX 4294967295U
#define LLONG_MAX 9223372036854775807LL
#define LLONG_MIN (-LLONG_MAX - 1LL)
#define CUDART_INF_F INFINITY
#define CUDART_NAN_F NAN
#define M_PI 3.14159265358979323846
#define M_PI_F 3.14159265358979323846f

// ---- barriers and warp intrinsics: every one is a scheduling point ----
#define __syncthreads() __emu_barrier(__LINE__, EMU_BAR_PLAIN, 1)
#define __syncthreads_count(p) __emu_barrier(__LINE__, EMU_BAR_COUNT, (p) ? 1 : 0)
#define __syncthreads_and(p) __emu_barrier(__LINE__, EMU_BAR_AND, (p) ? 1 : 0)
#define __syncthreads_or(p) __emu_barrier(__LINE__, EMU_BAR_OR, (p) ? 1 : 0)
#define __syncwarp(...) __emu_syncwarp(__LINE__, ##__VA_ARGS__)
#define __shfl_sync(...) __emu_shfl(__LINE__, EMU_SHFL_IDX, __VA_ARGS__)
#define __shfl_up_sync(...) __emu_shfl(__LINE__, EMU_SHFL_UP, __VA_ARGS__)
#define __shfl_down_sync(...) __emu_shfl(__LINE__, EMU_SHFL_DOWN, __VA_ARGS__)
#define __shfl_xor_sync(...) __emu_shfl(__LINE__, EMU_SHFL_XOR, __VA_ARGS__)
#define __ballot_sync(m, p) ((unsigned)__emu_warp_op(__LINE__, EMU_BALLOT, (m), (p) ? 1 : 0, 0, 32))
#define __any_sync(m, p) ((int)__emu_warp_op(__LINE__, EMU_ANY, (m), (p) ? 1 : 0, 0, 32))
#define __all_sync(m, p) ((int)__emu_warp_op(__LINE__, EMU_ALL, (m), (p) ? 1 : 0, 0, 32))
#define __match_any_sync(m, v) ((unsigned)__emu_warp_op(__LINE__, EMU_MATCH_ANY, (m), \
                                 __emu_bits(v), 0, 32))
#define __reduce_add_sync(m, v) __emu_reduce(__LINE__, EMU_REDUCE_ADD, (m), (v))
#define __reduce_min_sync(m, v) __emu_reduce(__LINE__, EMU_REDUCE_MIN, (m), (v))
#define __reduce_max_sync(m, v) __emu_reduce(__LINE__, EMU_REDUCE_MAX, (m), (v))
#define __reduce_and_sync(m, v) __emu_reduce(__LINE__, EMU_REDUCE_AND, (m), (v))
#define __reduce_or_sync(m, v) __emu_reduce(__LINE__, EMU_REDUCE_OR, (m), (v))
#define __reduce_xor_sync(m, v) __emu_reduce(__LINE__, EMU_REDUCE_XOR, (m), (v))
#define __activemask() __emu_activemask()
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_system() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define assert(e) ((e) ? (void)0 : __emu_assert_fail(#e, __FILE__, __LINE__))
#define __trap() __emu_trap("__trap()", __LINE__)
#define __brkpt() __emu_trap("__brkpt()", __LINE__)

static __inline__ void __emu_syncwarp(int line, unsigned mask = 0xffffffffu) {
    __emu_warp_op(line, EMU_SYNCWARP, mask, 0, 0, 32);
}
template <class T> static __inline__ unsigned long long __emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp operations move at most 8 bytes per lane");
    unsigned long long bits = 0;
    __builtin_memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T> static __inline__ T __emu_shfl(int line, int op, unsigned mask, T v, int arg,
                                                  int width = 32) {
    unsigned long long bits = __emu_warp_op(line, op, mask, __emu_bits(v), arg, width);
    T r;
    __builtin_memcpy(&r, &bits, sizeof(T));
    return r;
}
template <class T> static __inline__ T __emu_reduce(int line, int op, unsigned mask, T v) {
    static_assert(sizeof(T) == 4 && T(-1) != T(0), "__reduce_*_sync takes int or unsigned");
    bool is_signed = T(-1) < T(0);
    // the runtime reduces 64-bit values; sign-extend ints so min/max compare correctly
    long long wide = is_signed ? (long long)(int)v : (long long)(unsigned)v;
    return (T)__emu_warp_op(line, op, mask, (unsigned long long)wide, 0, 32);
}

// ---- __shared__ storage: _source.py rewrites every declaration to one of these ----
template <class T> struct __emu_decay { typedef T type; };
template <class T> struct __emu_decay<T[]> { typedef T* type; };
template <class T, unsigned long N> struct __emu_decay<T[N]> { typedef T* type; };
template <class T> static __inline__ T& __emu_shared_ref(int id, unsigned long align) {
    unsigned long a = alignof(T) > align ? alignof(T) : align;
    return *reinterpret_cast<T*>(__emu_shared_var(id, sizeof(T), a));
}
template <class T> static __inline__ typename __emu_decay<T>::type __emu_dynamic_ref() {
    return reinterpret_cast<typename __emu_decay<T>::type>(__emu_dynamic_shared());
}

// ---- atomics: real atomics so that ThreadSanitizer and >= 2 workers see them as such ----
#define EMU_ATOMIC_INT(T)                                                                         \
    static __inline__ T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); } \
    static __inline__ T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); } \
    static __inline__ T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); } \
    static __inline__ T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); } \
    static __inline__ T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }   \
    static __inline__ T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); } \
    static __inline__ T atomicCAS(T* p, T cmp, T v) {                                             \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);      \
        return cmp;                                                                               \
    }                                                                                             \
    static __inline__ T atomicMin(T* p, T v) {                                                    \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                             \
        while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,        \
                                                       __ATOMIC_RELAXED)) {}                      \
        return old;                                                                               \
    }                                                                                             \
    static __inline__ T atomicMax(T* p, T v) {                                                    \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                             \
        while (v > old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,        \
                                                       __ATOMIC_RELAXED)) {}                      \
        return old;                                                                               \
    }
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned int)
EMU_ATOMIC_INT(unsigned long long)
EMU_ATOMIC_INT(long long)

// float/double read-modify-write as a compare-and-swap loop on the bits
#define EMU_ATOMIC_FLOAT(T, U, NAME, EXPR)                                                        \
    static __inline__ T NAME(T* p, T v) {                                                         \
        U* u = reinterpret_cast<U*>(p);                                                           \
        U old_bits = __atomic_load_n(u, __ATOMIC_RELAXED), new_bits;                              \
        T old;                                                                                    \
        do {                                                                                      \
            __builtin_memcpy(&old, &old_bits, sizeof(T));                                         \
            T nv = (EXPR);                                                                        \
            __builtin_memcpy(&new_bits, &nv, sizeof(T));                                          \
        } while (!__atomic_compare_exchange_n(u, &old_bits, new_bits, true, __ATOMIC_RELAXED,     \
                                              __ATOMIC_RELAXED));                                 \
        return old;                                                                               \
    }
EMU_ATOMIC_FLOAT(float, unsigned int, atomicAdd, old + v)
EMU_ATOMIC_FLOAT(double, unsigned long long, atomicAdd, old + v)
static __inline__ float atomicExch(float* p, float v) {
    unsigned int b, r;
    __builtin_memcpy(&b, &v, 4);
    r = __atomic_exchange_n(reinterpret_cast<unsigned int*>(p), b, __ATOMIC_RELAXED);
    float f;
    __builtin_memcpy(&f, &r, 4);
    return f;
}
static __inline__ unsigned int atomicInc(unsigned int* p, unsigned int limit) {
    unsigned int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1u, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
static __inline__ unsigned int atomicDec(unsigned int* p, unsigned int limit) {
    unsigned int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, (old == 0u || old > limit) ? limit : old - 1u,
                                        true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}

// ---- math: the C library's functions, CUDA's float overloads and intrinsics ----
extern "C" {
int printf(const char*, ...);
#define EMU_MATH1(F) float F##f(float) noexcept; double F(double) noexcept;
#define EMU_MATH2(F) float F##f(float, float) noexcept; double F(double, double) noexcept;
EMU_MATH1(exp) EMU_MATH1(exp2) EMU_MATH1(expm1) EMU_MATH1(log) EMU_MATH1(log2) EMU_MATH1(log10)
EMU_MATH1(log1p) EMU_MATH1(sqrt) EMU_MATH1(cbrt) EMU_MATH1(sin) EMU_MATH1(cos) EMU_MATH1(tan)
EMU_MATH1(asin) EMU_MATH1(acos) EMU_MATH1(atan) EMU_MATH1(sinh) EMU_MATH1(cosh) EMU_MATH1(tanh)
EMU_MATH1(erf) EMU_MATH1(erfc) EMU_MATH1(lgamma) EMU_MATH1(tgamma) EMU_MATH1(fabs)
EMU_MATH1(floor) EMU_MATH1(ceil) EMU_MATH1(trunc) EMU_MATH1(round) EMU_MATH1(rint)
EMU_MATH1(nearbyint)
EMU_MATH2(pow) EMU_MATH2(atan2) EMU_MATH2(fmod) EMU_MATH2(remainder) EMU_MATH2(hypot)
EMU_MATH2(fmax) EMU_MATH2(fmin) EMU_MATH2(copysign) EMU_MATH2(fdim)
float fmaf(float, float, float) noexcept;
double fma(double, double, double) noexcept;
float ldexpf(float, int) noexcept;
double ldexp(double, int) noexcept;
float frexpf(float, int*) noexcept;
double frexp(double, int*) noexcept;
float modff(float, float*) noexcept;
long lroundf(float) noexcept;
long lrintf(float) noexcept;
float exp10f(float) noexcept;
void sincosf(float, float*, float*) noexcept;
#undef EMU_MATH1
#undef EMU_MATH2
}
#define EMU_OVERLOAD1(F) static __inline__ float F(float x) { return F##f(x); }
#define EMU_OVERLOAD2(F) static __inline__ float F(float x, float y) { return F##f(x, y); }
EMU_OVERLOAD1(exp) EMU_OVERLOAD1(exp2) EMU_OVERLOAD1(expm1) EMU_OVERLOAD1(log) EMU_OVERLOAD1(log2)
EMU_OVERLOAD1(log10) EMU_OVERLOAD1(log1p) EMU_OVERLOAD1(sqrt) EMU_OVERLOAD1(cbrt) EMU_OVERLOAD1(sin)
EMU_OVERLOAD1(cos) EMU_OVERLOAD1(tan) EMU_OVERLOAD1(asin) EMU_OVERLOAD1(acos) EMU_OVERLOAD1(atan)
EMU_OVERLOAD1(sinh) EMU_OVERLOAD1(cosh) EMU_OVERLOAD1(tanh) EMU_OVERLOAD1(erf) EMU_OVERLOAD1(erfc)
EMU_OVERLOAD1(fabs) EMU_OVERLOAD1(floor) EMU_OVERLOAD1(ceil) EMU_OVERLOAD1(trunc)
EMU_OVERLOAD1(round) EMU_OVERLOAD1(rint)
EMU_OVERLOAD2(pow) EMU_OVERLOAD2(atan2) EMU_OVERLOAD2(fmod) EMU_OVERLOAD2(hypot)
EMU_OVERLOAD2(fmax) EMU_OVERLOAD2(fmin) EMU_OVERLOAD2(copysign)
#undef EMU_OVERLOAD1
#undef EMU_OVERLOAD2
static __inline__ float fma(float x, float y, float z) { return fmaf(x, y, z); }
static __inline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static __inline__ double rsqrt(double x) { return 1.0 / sqrt(x); }
static __inline__ float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static __inline__ float exp10(float x) { return exp10f(x); }
// Fast-math intrinsics: the GPU's are approximate (a few ulp); here they are the exact functions.
static __inline__ float __expf(float x) { return expf(x); }
static __inline__ float __exp10f(float x) { return exp10f(x); }
static __inline__ float __logf(float x) { return logf(x); }
static __inline__ float __log2f(float x) { return log2f(x); }
static __inline__ float __log10f(float x) { return log10f(x); }
static __inline__ float __sinf(float x) { return sinf(x); }
static __inline__ float __cosf(float x) { return cosf(x); }
static __inline__ float __tanf(float x) { return tanf(x); }
static __inline__ void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
static __inline__ float __powf(float x, float y) { return powf(x, y); }
static __inline__ float __fdividef(float x, float y) { return x / y; }
static __inline__ float __frcp_rn(float x) { return 1.0f / x; }
static __inline__ float __fsqrt_rn(float x) { return sqrtf(x); }
static __inline__ float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static __inline__ float __fadd_rn(float x, float y) { return x + y; }
static __inline__ float __fsub_rn(float x, float y) { return x - y; }
static __inline__ float __fmul_rn(float x, float y) { return x * y; }
static __inline__ float __fdiv_rn(float x, float y) { return x / y; }
static __inline__ float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static __inline__ double __dadd_rn(double x, double y) { return x + y; }
static __inline__ double __dmul_rn(double x, double y) { return x * y; }
static __inline__ double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
static __inline__ float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
static __inline__ float fdividef(float x, float y) { return x / y; }
template <class T> static __inline__ T __ldg(const T* p) { return *p; }
template <class T> static __inline__ T __ldcg(const T* p) { return *p; }
template <class T> static __inline__ T __ldca(const T* p) { return *p; }
template <class T> static __inline__ T __ldcs(const T* p) { return *p; }
template <class T> static __inline__ void __stcg(T* p, T v) { *p = v; }
template <class T> static __inline__ void __stcs(T* p, T v) { *p = v; }
template <class T> static __inline__ bool isnan(T x) { return __builtin_isnan(x); }
template <class T> static __inline__ bool isinf(T x) { return __builtin_isinf(x); }
template <class T> static __inline__ bool isfinite(T x) { return __builtin_isfinite(x); }
template <class T> static __inline__ bool signbit(T x) { return __builtin_signbit(x); }
static __inline__ int __isnanf(float x) { return __builtin_isnan(x); }
static __inline__ int __isinff(float x) { return __builtin_isinf(x); }
static __inline__ int __finitef(float x) { return __builtin_isfinite(x); }

// min/max: CUDA's overload set (integer, float, and the mixed signed/unsigned ones)
#define EMU_MINMAX(T)                                                        \
    static __inline__ T min(T a, T b) { return b < a ? b : a; }              \
    static __inline__ T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int) EMU_MINMAX(unsigned int) EMU_MINMAX(long) EMU_MINMAX(unsigned long)
EMU_MINMAX(long long) EMU_MINMAX(unsigned long long)
static __inline__ unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
static __inline__ unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
static __inline__ unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
static __inline__ unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
static __inline__ float min(float a, float b) { return fminf(a, b); }
static __inline__ float max(float a, float b) { return fmaxf(a, b); }
static __inline__ double min(double a, double b) { return fmin(a, b); }
static __inline__ double max(double a, double b) { return fmax(a, b); }
static __inline__ int abs(int x) { return x < 0 ? -x : x; }
static __inline__ long long llabs(long long x) { return x < 0 ? -x : x; }
static __inline__ float abs(float x) { return fabsf(x); }
static __inline__ unsigned int umin(unsigned int a, unsigned int b) { return min(a, b); }
static __inline__ unsigned int umax(unsigned int a, unsigned int b) { return max(a, b); }
#undef EMU_MINMAX

// bit tricks and conversions
static __inline__ int __float_as_int(float x) { int i; __builtin_memcpy(&i, &x, 4); return i; }
static __inline__ unsigned int __float_as_uint(float x) { unsigned int i; __builtin_memcpy(&i, &x, 4); return i; }
static __inline__ float __int_as_float(int i) { float x; __builtin_memcpy(&x, &i, 4); return x; }
static __inline__ float __uint_as_float(unsigned int i) { float x; __builtin_memcpy(&x, &i, 4); return x; }
static __inline__ long long __double_as_longlong(double x) { long long i; __builtin_memcpy(&i, &x, 8); return i; }
static __inline__ double __longlong_as_double(long long i) { double x; __builtin_memcpy(&x, &i, 8); return x; }
static __inline__ int __float2int_rz(float x) { return (int)x; }
static __inline__ int __float2int_rn(float x) { return (int)__builtin_rintf(x); }
static __inline__ int __float2int_rd(float x) { return (int)__builtin_floorf(x); }
static __inline__ int __float2int_ru(float x) { return (int)__builtin_ceilf(x); }
static __inline__ unsigned int __float2uint_rz(float x) { return (unsigned int)x; }
static __inline__ unsigned int __float2uint_rn(float x) { return (unsigned int)__builtin_rintf(x); }
static __inline__ float __int2float_rn(int i) { return (float)i; }
static __inline__ float __uint2float_rn(unsigned int i) { return (float)i; }
static __inline__ int __popc(unsigned int x) { return __builtin_popcount(x); }
static __inline__ int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static __inline__ int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static __inline__ int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static __inline__ int __ffs(int x) { return __builtin_ffs(x); }
static __inline__ int __ffsll(long long x) { return __builtin_ffsll(x); }
static __inline__ unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static __inline__ int __mul24(int a, int b) { return (int)((a << 8) >> 8) * (int)((b << 8) >> 8); }
static __inline__ unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static __inline__ int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static __inline__ unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }
static __inline__ long long clock64() { return __emu_clock(); }
static __inline__ long long clock() { return __emu_clock(); }
static __inline__ void __nanosleep(unsigned int) {}

// ---- what the generated entry points use: call a kernel with its arguments from a void*[] ----
template <unsigned long... I> struct __emu_seq {};
template <unsigned long N, unsigned long... I> struct __emu_make_seq : __emu_make_seq<N - 1, N - 1, I...> {};
template <unsigned long... I> struct __emu_make_seq<0, I...> { typedef __emu_seq<I...> type; };
template <class... A, unsigned long... I>
static __inline__ void __emu_call(void (*k)(A...), void** a, __emu_seq<I...>) {
    k(*static_cast<A*>(a[I])...);
    (void)a;
}
template <class... A> static __inline__ void __emu_invoke(void (*k)(A...), void** a) {
    __emu_call(k, a, typename __emu_make_seq<sizeof...(A)>::type());
}
// Parameter types as the compiler sees them, one code per parameter: f float, d double, i int,
// I unsigned, l/q long/long long, L/Q unsigned ones, h/H short, c/b/B chars, o bool, v void,
// x anything else; a prefix * means pointer to, k const.
template <class T> struct __emu_tc { static void put(char*& p) { *p++ = 'x'; } };
#define EMU_TC(T, C) template <> struct __emu_tc<T> { static void put(char*& p) { *p++ = C; } };
EMU_TC(float, 'f') EMU_TC(double, 'd') EMU_TC(int, 'i') EMU_TC(unsigned int, 'I')
EMU_TC(long, 'l') EMU_TC(unsigned long, 'L') EMU_TC(long long, 'q') EMU_TC(unsigned long long, 'Q')
EMU_TC(short, 'h') EMU_TC(unsigned short, 'H') EMU_TC(char, 'c') EMU_TC(signed char, 'b')
EMU_TC(unsigned char, 'B') EMU_TC(bool, 'o') EMU_TC(void, 'v')
#undef EMU_TC
template <class T> struct __emu_tc<T*> { static void put(char*& p) { *p++ = '*'; __emu_tc<T>::put(p); } };
template <class T> struct __emu_tc<const T> { static void put(char*& p) { *p++ = 'k'; __emu_tc<T>::put(p); } };
template <class T> struct __emu_tc<volatile T> { static void put(char*& p) { __emu_tc<T>::put(p); } };
template <class T> struct __emu_tc<const volatile T> { static void put(char*& p) { *p++ = 'k'; __emu_tc<T>::put(p); } };
template <class... A> static __inline__ const char* __emu_describe(void (*)(A...), char* buf) {
    char* p = buf;
    int unused[] = {0, (__emu_tc<A>::put(p), *p++ = ',', 0)...};
    (void)unused;
    *p = 0;
    return buf;
}

#endif
