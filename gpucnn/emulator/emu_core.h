// emu_core.h — what the kernel translation unit and the emulator runtime share.
//
// The kernel side (cuda_emu.h, included into every .cu source) sees the CUDA built-ins and calls
// the __emu_* entry points below; the runtime (runtime.cpp) runs the threads of a block as fibers
// and implements them. Nothing here includes a system header: a .cu file compiles under NVRTC
// without any, and must compile here the same way.
#ifndef GPUCNN_EMU_CORE_H
#define GPUCNN_EMU_CORE_H

#define EMU_HIDDEN __attribute__((visibility("hidden")))

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Per OS thread; the scheduler sets threadIdx before it resumes each fiber.
extern __thread uint3 threadIdx EMU_HIDDEN;
extern __thread uint3 blockIdx EMU_HIDDEN;
extern __thread dim3 blockDim EMU_HIDDEN;
extern __thread dim3 gridDim EMU_HIDDEN;

// Warp operations (one entry point; `op` says which).
enum {
    EMU_SYNCWARP = 1, EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR,
    EMU_BALLOT, EMU_ANY, EMU_ALL, EMU_REDUCE_ADD, EMU_REDUCE_MIN, EMU_REDUCE_MAX,
    EMU_REDUCE_AND, EMU_REDUCE_OR, EMU_REDUCE_XOR, EMU_MATCH_ANY,
};
// __syncthreads variants.
enum { EMU_BAR_PLAIN = 0, EMU_BAR_COUNT, EMU_BAR_AND, EMU_BAR_OR };

extern "C++" {
EMU_HIDDEN int __emu_barrier(int line, int op, int pred);
EMU_HIDDEN unsigned long long __emu_warp_op(int line, int op, unsigned mask, unsigned long long bits,
                                            int arg, int width);
EMU_HIDDEN unsigned __emu_activemask();
EMU_HIDDEN void* __emu_shared_var(int id, unsigned long size, unsigned long align);
EMU_HIDDEN void* __emu_dynamic_shared();
[[noreturn]] EMU_HIDDEN void __emu_assert_fail(const char* expr, const char* file, int line);
[[noreturn]] EMU_HIDDEN void __emu_trap(const char* what, int line);
EMU_HIDDEN long long __emu_clock();
}

#endif
