// runtime.cpp — the emulator's block scheduler: CUDA threads as fibers on CPU threads.
//
// A launch runs its blocks on `workers` OS threads (the caller is worker 0; blocks dealt round-robin). Each block's threads
// are fibers on one OS thread; a fiber runs uninterrupted until it reaches a barrier
// (__syncthreads, a warp operation) or returns, then yields to the scheduler. When every fiber of
// the block is blocked, the scheduler releases whichever barrier is complete, checks the ones that
// never can be (divergent __syncthreads, lanes that exited, deadlock) and resumes the released
// fibers in the configured order: ascending, descending or seeded random thread index.
//
// Build variants (macros): EMU_TSAN   fiber switches and barriers annotated for ThreadSanitizer;
//                          EMU_ASAN   fiber stacks annotated, every buffer malloc'd exactly;
//                          EMU_DRIVER adds main(): the standalone executable of sanitizer runs.
// Without a sanitizer, out-of-bounds accesses hit PROT_NONE guard pages; the SIGSEGV handler
// jumps back to the worker's scheduler loop and the launch fails with a report instead.
#include "emu_core.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <vector>

#if defined(EMU_TSAN) || defined(EMU_ASAN)
#define EMU_SANITIZER 1
#endif

#ifdef EMU_TSAN
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
}
#endif
#ifdef EMU_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread dim3 blockDim;
__thread dim3 gridDim;

// ---------------------------------------------------------------- the interface to Python
extern "C" {
struct emu_arg {            // one kernel argument
    void* host;             // value args: the scalar's bytes; pointer args: the array's data
    uint64_t nbytes;
    int32_t kind;           // EMU_ARG_*
    int32_t alias;          // index of an earlier argument with the same array, else -1
};
struct emu_config {
    int32_t order;          // 0 ascending, 1 descending, 2 random
    int32_t workers;
    uint64_t seed;
    uint64_t max_shared;    // bytes of static + dynamic shared memory a block may use
    double timeout;         // seconds for the whole launch (0: none)
};
struct emu_result {
    int32_t kind;           // EMU_ERR_*; 0 = success
    int32_t where;          // for EMU_ERR_FAULT: EMU_AT_*
    int32_t arg;            // argument index of a fault, else -1
    int32_t is_write;       // 1 write, 0 read, -1 unknown
    int64_t offset;         // byte offset of the fault from the start of the argument's data
    uint64_t addr;
    uint32_t block[3];
    uint32_t thread[3];
    int32_t has_thread;
    int32_t pad;
    char msg[4096];
};
}
enum { EMU_ARG_VALUE = 0, EMU_ARG_PTR = 1, EMU_ARG_CONST_PTR = 2 };
enum {
    EMU_ERR_OK = 0, EMU_ERR_FAULT, EMU_ERR_FPE, EMU_ERR_DEADLOCK, EMU_ERR_DIVERGENT, EMU_ERR_WARP,
    EMU_ERR_ASSERT, EMU_ERR_TRAP, EMU_ERR_SHARED, EMU_ERR_TIMEOUT, EMU_ERR_ILLEGAL, EMU_ERR_CONFIG,
};
enum {
    EMU_AT_UNKNOWN = 0, EMU_AT_ARG_AFTER, EMU_AT_ARG_BEFORE, EMU_AT_ARG_CONST, EMU_AT_DYN_SHARED,
    EMU_AT_STACK, EMU_AT_GENERAL,
};

// ---------------------------------------------------------------- fibers
enum { F_RUN = 0, F_WAIT_BAR, F_WAIT_WARP, F_DONE, F_SERVICE, F_FATAL };

struct Fiber {
    void* sp;
    char* stack_lo;
    int state;
    unsigned ltid;                 // linear thread index in the block
    uint3 tid;
    int line, op, arg, width, pred;
    unsigned mask;
    unsigned long long val, result;
#ifdef EMU_TSAN
    void* tsan;
    int parity;
    unsigned sync_slot;
    char name[64];
#endif
#ifdef EMU_ASAN
    void* fake_stack;
#endif
};

struct Launch;

struct Worker {
    int index = 0;
    Fiber* fibers = nullptr;
    unsigned cap = 0;
    char* stacks = nullptr;
    size_t stacks_len = 0;
    void* sched_sp = nullptr;
    Fiber* cur = nullptr;
    Launch* L = nullptr;
    volatile int in_kernel = 0;
    sigjmp_buf jmp;
    char* altstack = nullptr;
    // block state
    unsigned n = 0, ndone = 0, nbar = 0, nwarp = 0;
    uint64_t rng = 0;
    std::vector<unsigned> perm;
    // shared memory
    char* dyn_map = nullptr;
    size_t dyn_len = 0;
    char* dyn_ptr = nullptr;
    char* arena = nullptr;
    size_t arena_used = 0;
    std::vector<void*> slots;
    std::vector<int> used_slots;
    std::vector<void*> to_free;    // sanitizer modes: shared allocations of this launch
    // a service request from a fiber (TSan: allocations must come from the scheduler)
    int svc_id = 0;
    size_t svc_size = 0, svc_align = 0;
    // fault record, written by the signal handler
    int fault_sig = 0, fault_code = 0, fault_write = -1;
    void* fault_addr = nullptr;
    Fiber* fault_fiber = nullptr;
#ifdef EMU_TSAN
    void* tsan_sched = nullptr;
    char bar_sync[2];
    std::vector<unsigned> warp_gen;     // per (warp, leader lane)
    std::vector<char> warp_sync;        // two sync objects per (warp, leader lane)
    unsigned bar_gen = 0;
    char done_sync;
#endif
#ifdef EMU_ASAN
    void* sched_fake = nullptr;
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
};

static const size_t kPage = 4096;
#ifdef EMU_SANITIZER
static const size_t kStack = 256 * 1024;
#else
static const size_t kStack = 64 * 1024;
#endif
static const size_t kAltStack = 64 * 1024;
static const size_t kArena = 64 * 1024;

struct Buffer {
    char* map;
    size_t map_len;
    char* data;
    size_t nbytes;
    size_t slack;          // bytes between the data's end and the guard page (256-byte alignment)
    int writable;
};

struct Launch {
    void (*entry)(void**);
    void** argv;
    unsigned grid[3], block[3];
    unsigned nthreads;
    uint64_t nblocks;
    size_t shmem;
    emu_config cfg;
    std::vector<Buffer> bufs;
    std::vector<int> buf_of_arg;
    std::vector<uint64_t> order;
    int nworkers = 1;
    std::atomic<int> failed{0};
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    emu_result* res;
    double deadline;
};

static __thread Worker* tls_w;

static double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// ---------------------------------------------------------------- context switch
// emu_switch(save, to): saves the callee-saved registers on the current stack, stores the stack
// pointer in *save and continues on the stack `to` (a fiber started by fiber_prepare, or one that
// called emu_switch itself). Some 20 instructions: a ucontext switch costs a syscall.
#if defined(__x86_64__) && !defined(EMU_FORCE_UCONTEXT)
extern "C" void emu_switch(void** save, void* to);
extern "C" void emu_fiber_start();
asm(R"(
    .text
    .hidden emu_switch
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
    .hidden emu_fiber_start
    .globl emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");
#else
#define EMU_UCONTEXT 1
#endif

static void fiber_main(Fiber* f);

#ifdef EMU_UCONTEXT
// The portable fallback (slower: a ucontext switch is a syscall) keeps a ucontext_t per fiber.
static __thread ucontext_t tls_sched_uc;
static __thread std::vector<ucontext_t>* tls_uc;
static void uc_entry(unsigned hi, unsigned lo) {
    fiber_main(reinterpret_cast<Fiber*>(((uintptr_t)hi << 32) | lo));
}
#endif

static void fiber_prepare(Worker* w, Fiber* f) {
#ifdef EMU_UCONTEXT
    ucontext_t& uc = (*tls_uc)[f->ltid];
    getcontext(&uc);
    uc.uc_stack.ss_sp = f->stack_lo;
    uc.uc_stack.ss_size = kStack;
    uc.uc_link = nullptr;
    uintptr_t p = (uintptr_t)f;
    makecontext(&uc, (void (*)())uc_entry, 2, (unsigned)(p >> 32), (unsigned)p);
    (void)w;
#else
    (void)w;
    void** sp = reinterpret_cast<void**>(f->stack_lo + kStack - 72);
    sp[0] = nullptr;                                    // r15
    sp[1] = nullptr;                                    // r14
    sp[2] = reinterpret_cast<void*>(&fiber_main);       // r13: called by emu_fiber_start
    sp[3] = f;                                          // r12: its argument
    sp[4] = nullptr;                                    // rbx
    sp[5] = nullptr;                                    // rbp
    sp[6] = reinterpret_cast<void*>(&emu_fiber_start);  // return address
    f->sp = sp;
#endif
}

// scheduler -> fiber
static void switch_in(Worker* w, Fiber* f) {
    threadIdx = f->tid;
    w->cur = f;
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(f->tsan, 0);   // the scheduler's setup happens before the fiber runs
#endif
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&w->sched_fake, f->stack_lo, kStack);
#endif
    w->in_kernel = 1;
#ifdef EMU_UCONTEXT
    swapcontext(&tls_sched_uc, &(*tls_uc)[f->ltid]);
#else
    emu_switch(&w->sched_sp, f->sp);
#endif
    w->in_kernel = 0;
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(w->sched_fake, nullptr, nullptr);
#endif
    w->cur = nullptr;
}

// fiber -> scheduler; returns when the scheduler resumes this fiber
static void yield_fiber(Worker* w, Fiber* f) {
#ifdef EMU_TSAN
    // no happens-before edge: what one thread wrote before a yield is not ordered before what the
    // next thread reads unless a barrier (annotated separately) says so
    __tsan_switch_to_fiber(w->tsan_sched, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(f->state == F_DONE || f->state == F_FATAL ? nullptr : &f->fake_stack,
                                   w->sched_bottom, w->sched_size);
#endif
#ifdef EMU_UCONTEXT
    swapcontext(&(*tls_uc)[f->ltid], &tls_sched_uc);
#else
    emu_switch(&f->sp, w->sched_sp);
#endif
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &w->sched_bottom, &w->sched_size);
#endif
}

static void fiber_main(Fiber* f) {
    Worker* w = tls_w;
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom, &w->sched_size);
#endif
    w->L->entry(w->L->argv);
    f->state = F_DONE;
    w->ndone++;
#ifdef EMU_TSAN
    __tsan_release(&w->done_sync);
#endif
    yield_fiber(w, f);
    abort();   // a finished fiber is never resumed
}

// ---------------------------------------------------------------- errors
static const char* op_name(int op) {
    switch (op) {
        case EMU_SYNCWARP: return "__syncwarp";
        case EMU_SHFL_IDX: return "__shfl_sync";
        case EMU_SHFL_UP: return "__shfl_up_sync";
        case EMU_SHFL_DOWN: return "__shfl_down_sync";
        case EMU_SHFL_XOR: return "__shfl_xor_sync";
        case EMU_BALLOT: return "__ballot_sync";
        case EMU_ANY: return "__any_sync";
        case EMU_ALL: return "__all_sync";
        case EMU_REDUCE_ADD: return "__reduce_add_sync";
        case EMU_REDUCE_MIN: return "__reduce_min_sync";
        case EMU_REDUCE_MAX: return "__reduce_max_sync";
        case EMU_REDUCE_AND: return "__reduce_and_sync";
        case EMU_REDUCE_OR: return "__reduce_or_sync";
        case EMU_REDUCE_XOR: return "__reduce_xor_sync";
        case EMU_MATCH_ANY: return "__match_any_sync";
    }
    return "a warp operation";
}

static void describe_wait(const Fiber* g, char* out, size_t len) {
    if (g->state == F_WAIT_BAR)
        snprintf(out, len, "waits at __syncthreads (line %d)", g->line);
    else if (g->state == F_WAIT_WARP)
        snprintf(out, len, "waits at %s (line %d, mask 0x%08x)", op_name(g->op), g->line, g->mask);
    else if (g->state == F_DONE)
        snprintf(out, len, "has exited");
    else
        snprintf(out, len, "is running");
}

// Record the launch's first error; `f` names the thread (null: none).
__attribute__((format(printf, 4, 5)))
static void fail(Worker* w, int kind, const Fiber* f, const char* fmt, ...) {
    Launch* L = w->L;
    pthread_mutex_lock(&L->mu);
    if (!L->failed.load()) {
        emu_result* r = L->res;
        r->kind = kind;
        r->block[0] = blockIdx.x; r->block[1] = blockIdx.y; r->block[2] = blockIdx.z;
        if (f) {
            r->has_thread = 1;
            r->thread[0] = f->tid.x; r->thread[1] = f->tid.y; r->thread[2] = f->tid.z;
        }
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->msg, sizeof r->msg, fmt, ap);
        va_end(ap);
        L->failed.store(1);
    }
    pthread_mutex_unlock(&L->mu);
}

// An error found while a fiber runs: record it, and leave the fiber for good.
[[noreturn]] static void fiber_fatal(Worker* w, Fiber* f) {
    f->state = F_FATAL;
    yield_fiber(w, f);
    abort();
}

// ---------------------------------------------------------------- memory
static char* map_pages(size_t len) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
}
static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Every fiber stack has a PROT_NONE page below it, so an overflow faults instead of corrupting.
static bool ensure_fibers(Worker* w, unsigned n) {
    if (n <= w->cap) return true;
    unsigned cap = n < 64 ? 64 : n;
    size_t slot = kStack + kPage;
    char* stacks = map_pages(slot * cap);
    if (!stacks) return false;
    for (unsigned i = 0; i < cap; ++i) mprotect(stacks + i * slot, kPage, PROT_NONE);
    Fiber* fibers = static_cast<Fiber*>(calloc(cap, sizeof(Fiber)));
#ifdef EMU_TSAN
    for (unsigned i = 0; i < w->cap; ++i) fibers[i].tsan = w->fibers[i].tsan;
    for (unsigned i = w->cap; i < cap; ++i) fibers[i].tsan = __tsan_create_fiber(0);
    w->warp_gen.assign((cap + 31) / 32 * 32, 0);
    w->warp_sync.assign((cap + 31) / 32 * 64, 0);
#endif
    if (w->stacks) munmap(w->stacks, w->stacks_len);
    free(w->fibers);
    w->stacks = stacks;
    w->stacks_len = slot * cap;
    w->fibers = fibers;
    w->cap = cap;
    for (unsigned i = 0; i < cap; ++i) w->fibers[i].stack_lo = stacks + i * slot + kPage;
#ifdef EMU_UCONTEXT
    if (!tls_uc) tls_uc = new std::vector<ucontext_t>();
    tls_uc->resize(cap);
#endif
    return true;
}

#ifdef EMU_SANITIZER
__attribute__((noinline)) static void* emu_dynamic_shared_alloc(size_t n) {
    // Named so that an AddressSanitizer report says where the block's dynamic shared memory
    // came from: exactly `shared_mem` bytes, as the host asked for.
    void* p = malloc(n ? n : 1);
    memset(p, 0xff, n);
    return p;
}
__attribute__((noinline)) static void* emu_static_shared_alloc(size_t n, size_t align) {
    void* p = nullptr;
    if (posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, n ? n : 1)) return nullptr;
    memset(p, 0xff, n);
    return p;
}
#endif

// Shared memory of a new block: poisoned (0xff bytes: NaN as float or double, -1 as int).
static bool block_shared_begin(Worker* w) {
    Launch* L = w->L;
    for (int id : w->used_slots) w->slots[id] = nullptr;
    w->used_slots.clear();
    w->arena_used = 0;
#ifdef EMU_SANITIZER
    w->dyn_ptr = static_cast<char*>(emu_dynamic_shared_alloc(L->shmem));
    w->to_free.push_back(w->dyn_ptr);
#else
    size_t body = round_up(L->shmem ? L->shmem : 1, kPage);
    if (body + kPage > w->dyn_len) {
        if (w->dyn_map) munmap(w->dyn_map, w->dyn_len);
        w->dyn_len = body + kPage;
        w->dyn_map = map_pages(w->dyn_len);
        if (!w->dyn_map) return false;
        mprotect(w->dyn_map + body, kPage, PROT_NONE);
    }
    // Ends exactly at the guard page: one byte too far faults.
    size_t limit = w->dyn_len - kPage;
    w->dyn_ptr = w->dyn_map + limit - L->shmem;
    memset(w->dyn_ptr, 0xff, L->shmem);
    if (!w->arena) w->arena = map_pages(kArena);
#endif
    return true;
}

static void block_shared_end(Worker* w) {
#if defined(EMU_ASAN)
    for (void* p : w->to_free) free(p);
    w->to_free.clear();
#else
    (void)w;   // TSan: freed at the end of the launch, after the scheduler acquired every fiber
#endif
}

static void* shared_alloc(Worker* w, int id, size_t size, size_t align) {
    Launch* L = w->L;
    if (id >= (int)w->slots.size()) w->slots.resize(id + 64, nullptr);
#ifdef EMU_SANITIZER
    void* p = emu_static_shared_alloc(size, align);
    w->to_free.push_back(p);
    w->arena_used += size;
#else
    size_t off = round_up(w->arena_used, align);
    w->arena_used = off + size;
    void* p = w->arena_used <= kArena ? w->arena + off : nullptr;
    if (p) memset(p, 0xff, size);
#endif
    if (w->arena_used + L->shmem > L->cfg.max_shared || !p) return nullptr;
    w->slots[id] = p;
    w->used_slots.push_back(id);
    return p;
}

// ---------------------------------------------------------------- called by kernel code
void* __emu_shared_var(int id, unsigned long size, unsigned long align) {
    Worker* w = tls_w;
    if (id < (int)w->slots.size() && w->slots[id]) return w->slots[id];
    Fiber* f = w->cur;
#ifdef EMU_TSAN
    // Allocate and poison on the scheduler, which every thread of the block syncs with on its
    // next resume: otherwise the poisoning write would race with the other threads' first use.
    w->svc_id = id; w->svc_size = size; w->svc_align = align;
    f->state = F_SERVICE;
    yield_fiber(w, f);
    void* p = id < (int)w->slots.size() ? w->slots[id] : nullptr;
#else
    void* p = shared_alloc(w, id, size, align);
#endif
    if (!p) {
        fail(w, EMU_ERR_SHARED, f,
             "a __shared__ variable of %lu bytes brings the block's shared memory to %zu bytes "
             "(static) + %zu (dynamic, the launch's shared_mem), over the limit of %llu bytes",
             size, w->arena_used, w->L->shmem, (unsigned long long)w->L->cfg.max_shared);
        fiber_fatal(w, f);
    }
    return p;
}

void* __emu_dynamic_shared() { return tls_w->dyn_ptr; }

int __emu_barrier(int line, int op, int pred) {
    Worker* w = tls_w;
    Fiber* f = w->cur;
    f->state = F_WAIT_BAR;
    f->line = line;
    f->op = op;
    f->pred = pred;
    w->nbar++;
#ifdef EMU_TSAN
    f->parity = w->bar_gen & 1;
    __tsan_release(&w->bar_sync[f->parity]);
#endif
    yield_fiber(w, f);
#ifdef EMU_TSAN
    __tsan_acquire(&w->bar_sync[f->parity]);
#endif
    return (int)f->result;
}

unsigned long long __emu_warp_op(int line, int op, unsigned mask, unsigned long long bits, int arg,
                                 int width) {
    Worker* w = tls_w;
    Fiber* f = w->cur;
    unsigned lane = f->ltid & 31;
    if (!((mask >> lane) & 1u)) {
        fail(w, EMU_ERR_WARP, f, "%s at line %d: mask 0x%08x does not name the calling lane %u",
             op_name(op), line, mask, lane);
        fiber_fatal(w, f);
    }
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail(w, EMU_ERR_WARP, f, "%s at line %d: width %d is not a power of two <= 32",
             op_name(op), line, width);
        fiber_fatal(w, f);
    }
    f->state = F_WAIT_WARP;
    f->line = line;
    f->op = op;
    f->mask = mask;
    f->val = bits;
    f->arg = arg;
    f->width = width;
    w->nwarp++;
#ifdef EMU_TSAN
    f->sync_slot = (f->ltid / 32) * 32 + __builtin_ctz(mask);
    f->parity = w->warp_gen[f->sync_slot] & 1;
    __tsan_release(&w->warp_sync[f->sync_slot * 2 + f->parity]);
#endif
    yield_fiber(w, f);
#ifdef EMU_TSAN
    __tsan_acquire(&w->warp_sync[f->sync_slot * 2 + f->parity]);
#endif
    return f->result;
}

unsigned __emu_activemask() {
    Worker* w = tls_w;
    unsigned base = w->cur->ltid & ~31u, m = 0;
    for (unsigned j = 0; j < 32 && base + j < w->n; ++j)
        if (w->fibers[base + j].state != F_DONE) m |= 1u << j;
    return m;
}

void __emu_assert_fail(const char* expr, const char* file, int line) {
    Worker* w = tls_w;
    fail(w, EMU_ERR_ASSERT, w->cur, "assertion failed: %s (%s:%d)", expr, file, line);
    fiber_fatal(w, w->cur);
}

void __emu_trap(const char* what, int line) {
    Worker* w = tls_w;
    fail(w, EMU_ERR_TRAP, w->cur, "%s at line %d", what, line);
    fiber_fatal(w, w->cur);
}

long long __emu_clock() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// ---------------------------------------------------------------- the scheduler
static uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static bool warp_result(Worker* w, Fiber* base, unsigned lanes, unsigned M, unsigned j) {
    Fiber* g = &base[j];
    unsigned src = j, wd = (unsigned)g->width, seg = j & ~(wd - 1), a = (unsigned)g->arg;
    switch (g->op) {
        case EMU_SYNCWARP: g->result = 0; return true;
        case EMU_SHFL_IDX: src = seg + (a & (wd - 1)); break;
        case EMU_SHFL_UP: src = (j - seg) >= a ? j - a : j; break;
        case EMU_SHFL_DOWN: src = (j - seg) + a < wd ? j + a : j; break;
        case EMU_SHFL_XOR: src = j ^ a; if (src >= seg + wd || src >= 32) src = j; break;
        case EMU_BALLOT: case EMU_ANY: case EMU_ALL: {
            unsigned b = 0;
            for (unsigned k = 0; k < lanes; ++k)
                if (((M >> k) & 1u) && base[k].val) b |= 1u << k;
            g->result = g->op == EMU_BALLOT ? b : g->op == EMU_ANY ? (b != 0) : (b == M);
            return true;
        }
        case EMU_MATCH_ANY: {
            unsigned b = 0;
            for (unsigned k = 0; k < lanes; ++k)
                if (((M >> k) & 1u) && base[k].val == g->val) b |= 1u << k;
            g->result = b;
            return true;
        }
        default: {   // __reduce_*_sync over sign-extended 32-bit values
            long long acc = 0;
            bool first = true;
            for (unsigned k = 0; k < lanes; ++k) {
                if (!((M >> k) & 1u)) continue;
                long long v = (long long)base[k].val;
                if (first) { acc = v; first = false; continue; }
                switch (g->op) {
                    case EMU_REDUCE_ADD: acc += v; break;
                    case EMU_REDUCE_MIN: acc = v < acc ? v : acc; break;
                    case EMU_REDUCE_MAX: acc = v > acc ? v : acc; break;
                    case EMU_REDUCE_AND: acc &= v; break;
                    case EMU_REDUCE_OR: acc |= v; break;
                    case EMU_REDUCE_XOR: acc ^= v; break;
                }
            }
            g->result = (unsigned long long)acc;
            return true;
        }
    }
    if (src != j && !((M >> src) & 1u)) {
        fail(w, EMU_ERR_WARP, g,
             "%s at line %d: lane %u reads lane %u, which the mask 0x%08x does not name "
             "(its value is undefined on a GPU)", op_name(g->op), g->line, j, src, M);
        return false;
    }
    g->result = base[src].val;
    return true;
}

// Release every warp group whose lanes have all arrived; false on an error.
static bool release_warps(Worker* w, unsigned& released) {
    unsigned n = w->n;
    for (unsigned b = 0; b < n; b += 32) {
        Fiber* base = &w->fibers[b];
        unsigned lanes = n - b < 32 ? n - b : 32, visited = 0;
        for (unsigned l = 0; l < lanes; ++l) {
            Fiber* f = &base[l];
            if (f->state != F_WAIT_WARP || ((visited >> l) & 1u)) continue;
            unsigned M = f->mask;
            bool complete = true;
            for (unsigned j = 0; j < 32; ++j) {
                if (!((M >> j) & 1u)) continue;
                if (j >= lanes) {
                    fail(w, EMU_ERR_WARP, f,
                         "%s at line %d: mask 0x%08x names lane %u, but this warp has only %u "
                         "threads (the block has %u)", op_name(f->op), f->line, M, j, lanes, n);
                    return false;
                }
                Fiber* g = &base[j];
                if (g->state == F_DONE) {
                    fail(w, EMU_ERR_WARP, f,
                         "%s at line %d: mask 0x%08x names lane %u (thread (%u,%u,%u)), which has "
                         "exited", op_name(f->op), f->line, M, j, g->tid.x, g->tid.y, g->tid.z);
                    return false;
                }
                if (g->state != F_WAIT_WARP || g->mask != M) complete = false;
            }
            if (!complete) continue;
            for (unsigned j = 0; j < lanes; ++j) {
                Fiber* g = &base[j];
                if (!((M >> j) & 1u) || g->op == f->op) continue;
                if (g->op == EMU_SYNCWARP && f->op == EMU_SYNCWARP) continue;
                fail(w, EMU_ERR_WARP, f,
                     "lanes of one warp disagree: lane %u is at %s (line %d), lane %u at %s "
                     "(line %d), with the same mask 0x%08x", l, op_name(f->op), f->line, j,
                     op_name(g->op), g->line, M);
                return false;
            }
            for (unsigned j = 0; j < lanes; ++j)
                if ((M >> j) & 1u && !warp_result(w, base, lanes, M, j)) return false;
            for (unsigned j = 0; j < lanes; ++j) {
                if (!((M >> j) & 1u)) continue;
                base[j].state = F_RUN;
                w->nwarp--;
            }
            visited |= M;
            released++;
#ifdef EMU_TSAN
            w->warp_gen[b + __builtin_ctz(M)]++;
#endif
        }
    }
    return true;
}

// Every fiber is blocked or done: release what can go on, or report why nothing can.
static bool resolve(Worker* w) {
    unsigned released = 0, n = w->n;
    if (w->nwarp && !release_warps(w, released)) return false;
    if (released) return true;
    Fiber* F = w->fibers;
    if (w->nbar && w->nbar + w->ndone == n) {
        unsigned first = 0;
        while (F[first].state != F_WAIT_BAR) ++first;
        if (w->ndone) {
            unsigned d = 0;
            while (F[d].state != F_DONE) ++d;
            fail(w, EMU_ERR_DIVERGENT, &F[first],
                 "__syncthreads in divergent code: this thread waits at __syncthreads (line %d), "
                 "but thread (%u,%u,%u) and %u more have exited without reaching it",
                 F[first].line, F[d].tid.x, F[d].tid.y, F[d].tid.z, w->ndone - 1);
            return false;
        }
        int count = 0;
        for (unsigned i = 0; i < n; ++i) {
            if (F[i].line != F[first].line) {
                fail(w, EMU_ERR_DIVERGENT, &F[first],
                     "__syncthreads in divergent code: this thread waits at line %d, thread "
                     "(%u,%u,%u) at line %d", F[first].line, F[i].tid.x, F[i].tid.y, F[i].tid.z,
                     F[i].line);
                return false;
            }
            count += F[i].pred;
        }
        for (unsigned i = 0; i < n; ++i) {
            Fiber* f = &F[i];
            f->result = f->op == EMU_BAR_COUNT ? count : f->op == EMU_BAR_AND ? count == (int)n
                      : f->op == EMU_BAR_OR ? count > 0 : 0;
            f->state = F_RUN;
        }
        w->nbar = 0;
#ifdef EMU_TSAN
        w->bar_gen++;
#endif
        return true;
    }
    // Deadlock: name a waiting lane and a lane it waits for.
    for (unsigned i = 0; i < n; ++i) {
        Fiber* f = &F[i];
        if (f->state != F_WAIT_WARP) continue;
        unsigned b = i & ~31u;
        for (unsigned j = 0; j < 32; ++j) {
            Fiber* g = &F[b + j];
            if (!((f->mask >> j) & 1u) || (g->state == F_WAIT_WARP && g->mask == f->mask)) continue;
            char what[160];
            describe_wait(g, what, sizeof what);
            fail(w, EMU_ERR_DEADLOCK, f,
                 "deadlock: this thread waits at %s (line %d, mask 0x%08x) for lane %u "
                 "(thread (%u,%u,%u)), which %s", op_name(f->op), f->line, f->mask, j, g->tid.x,
                 g->tid.y, g->tid.z, what);
            return false;
        }
    }
    fail(w, EMU_ERR_DEADLOCK, nullptr, "deadlock: no thread of the block can proceed");
    return false;
}

static void name_fibers(Worker* w) {
#ifdef EMU_TSAN
    for (unsigned i = 0; i < w->n; ++i) {
        Fiber* f = &w->fibers[i];
        snprintf(f->name, sizeof f->name, "CUDA thread (%u,%u,%u) of block (%u,%u,%u)", f->tid.x,
                 f->tid.y, f->tid.z, blockIdx.x, blockIdx.y, blockIdx.z);
        __tsan_set_fiber_name(f->tsan, f->name);
    }
#else
    (void)w;
#endif
}

static void run_fiber(Worker* w, Fiber* f) {
    for (;;) {
        switch_in(w, f);
        if (f->state != F_SERVICE) return;
        f->state = F_RUN;   // TSan build: allocate a __shared__ variable on the fiber's behalf
        shared_alloc(w, w->svc_id, w->svc_size, w->svc_align);
    }
}

static void run_block(Worker* w, uint64_t b) {
    Launch* L = w->L;
    blockIdx.x = (unsigned)(b % L->grid[0]);
    blockIdx.y = (unsigned)(b / L->grid[0] % L->grid[1]);
    blockIdx.z = (unsigned)(b / ((uint64_t)L->grid[0] * L->grid[1]));
    unsigned n = L->nthreads, bx = L->block[0], by = L->block[1];
    w->n = n;
    w->ndone = w->nbar = w->nwarp = 0;
    for (unsigned i = 0; i < n; ++i) {
        Fiber* f = &w->fibers[i];
        f->state = F_RUN;
        f->ltid = i;
        f->tid = uint3{i % bx, i / bx % by, i / (bx * by)};
        f->result = 0;
        fiber_prepare(w, f);
    }
    name_fibers(w);
    if (!block_shared_begin(w)) {
        fail(w, EMU_ERR_CONFIG, nullptr, "cannot map %zu bytes of shared memory", L->shmem);
        return;
    }
    uint64_t s = L->cfg.seed * 0x2545f4914f6cdd1dULL + b;
    w->rng = splitmix(s);
    int order = L->cfg.order;
    while (w->ndone < n) {
        if (order == 2) {   // a fresh permutation for every stretch between barriers
            w->perm.resize(n);
            for (unsigned i = 0; i < n; ++i) w->perm[i] = i;
            for (unsigned i = n - 1; i > 0; --i) {
                unsigned j = (unsigned)(splitmix(w->rng) % (i + 1));
                unsigned t = w->perm[i]; w->perm[i] = w->perm[j]; w->perm[j] = t;
            }
        }
        for (unsigned k = 0; k < n; ++k) {
            unsigned i = order == 0 ? k : order == 1 ? n - 1 - k : w->perm[k];
            Fiber* f = &w->fibers[i];
            if (f->state != F_RUN) continue;
            run_fiber(w, f);
            if (L->failed.load(std::memory_order_relaxed)) return;
        }
        if (w->ndone == n) break;
        if (L->cfg.timeout > 0 && now_s() > L->deadline) {
            fail(w, EMU_ERR_TIMEOUT, nullptr, "the launch ran longer than %.1f s", L->cfg.timeout);
            return;
        }
        if (!resolve(w)) return;
    }
    block_shared_end(w);
}

// ---------------------------------------------------------------- faults (no-sanitizer builds)
static const int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP};
static struct sigaction g_old_actions[5];

static void on_fault(int sig, siginfo_t* si, void* ctx) {
    Worker* w = tls_w;
    if (w && w->in_kernel) {
        w->in_kernel = 0;
        w->fault_sig = sig;
        w->fault_code = si->si_code;
        w->fault_addr = si->si_addr;
        w->fault_write = -1;
#if defined(__x86_64__) && defined(REG_ERR) && !defined(EMU_FORCE_UCONTEXT)
        ucontext_t* uc = static_cast<ucontext_t*>(ctx);
        if (sig == SIGSEGV) w->fault_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#else
        (void)ctx;
#endif
        w->fault_fiber = w->cur;
        siglongjmp(w->jmp, 1);
    }
    // Not ours: hand it to whoever had it before (Python's faulthandler, the default action).
    for (int i = 0; i < 5; ++i) {
        if (kSignals[i] != sig) continue;
        struct sigaction* old = &g_old_actions[i];
        if (old->sa_flags & SA_SIGINFO) { old->sa_sigaction(sig, si, ctx); return; }
        if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) { old->sa_handler(sig); return; }
        signal(sig, SIG_DFL);   // the instruction faults again, now with the default action
        return;
    }
}

static void report_fault(Worker* w) {
    Launch* L = w->L;
    char* a = static_cast<char*>(w->fault_addr);
    Fiber* f = w->fault_fiber;
    int where = EMU_AT_UNKNOWN, arg = -1;
    int64_t off = 0;
    for (size_t i = 0; i < L->bufs.size() && where == EMU_AT_UNKNOWN; ++i) {
        Buffer& B = L->bufs[i];
        if (a < B.map || a >= B.map + B.map_len) continue;
        off = a - B.data;
        if (a >= B.data + B.nbytes && a >= B.map + B.map_len - kPage) where = EMU_AT_ARG_AFTER;
        else if (a < B.map + kPage) where = EMU_AT_ARG_BEFORE;
        else if (!B.writable) where = EMU_AT_ARG_CONST;
        else continue;
        for (size_t k = 0; k < L->buf_of_arg.size(); ++k)
            if (L->buf_of_arg[k] == (int)i) { arg = (int)k; break; }
    }
    if (where == EMU_AT_UNKNOWN && w->dyn_map && a >= w->dyn_map + w->dyn_len - kPage &&
        a < w->dyn_map + w->dyn_len) {
        where = EMU_AT_DYN_SHARED;
        off = a - w->dyn_ptr;
    }
    if (where == EMU_AT_UNKNOWN && f && a >= f->stack_lo - kPage && a < f->stack_lo)
        where = EMU_AT_STACK;
    if (where == EMU_AT_UNKNOWN && w->fault_sig == SIGSEGV && w->fault_code == SI_KERNEL)
        where = EMU_AT_GENERAL;
    const char* sig = w->fault_sig == SIGSEGV ? "SIGSEGV" : w->fault_sig == SIGBUS ? "SIGBUS"
                    : w->fault_sig == SIGFPE ? "SIGFPE" : w->fault_sig == SIGILL ? "SIGILL" : "SIGTRAP";
    int kind = w->fault_sig == SIGFPE ? EMU_ERR_FPE
             : (w->fault_sig == SIGILL || w->fault_sig == SIGTRAP) ? EMU_ERR_ILLEGAL : EMU_ERR_FAULT;
    fail(w, kind, f, "%s at address %p", sig, w->fault_addr);
    emu_result* r = L->res;
    pthread_mutex_lock(&L->mu);
    if (r->kind == kind && r->arg == -1 && r->where == 0) {
        r->where = where;
        r->arg = arg;
        r->offset = off;
        r->addr = (uint64_t)(uintptr_t)a;
        r->is_write = w->fault_write;
    }
    pthread_mutex_unlock(&L->mu);
}

// Flush-to-zero and denormals-are-zero while kernels run, as CuPy's -ftz=true makes the GPU do:
// a subnormal input reads as a zero of its sign and a subnormal result is written as one.
// The caller's mode is restored when the worker ends (the Python thread is worker 0).
static unsigned enter_flush_mode() {
#if defined(__x86_64__) || defined(__i386__)
    unsigned old;
    __asm__ volatile("stmxcsr %0" : "=m"(old));
    unsigned now = old | 0x8040u;                 // FTZ (bit 15) | DAZ (bit 6)
    __asm__ volatile("ldmxcsr %0" : : "m"(now));
    return old;
#elif defined(__aarch64__)
    unsigned long old;
    __asm__ volatile("mrs %0, fpcr" : "=r"(old));
    __asm__ volatile("msr fpcr, %0" : : "r"(old | (1ul << 24)));   // FZ: inputs and outputs
    return (unsigned)old;
#else
    return 0;
#endif
}

static void leave_flush_mode(unsigned old) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("ldmxcsr %0" : : "m"(old));
#elif defined(__aarch64__)
    __asm__ volatile("msr fpcr, %0" : : "r"((unsigned long)old));
#else
    (void)old;
#endif
}

// ---------------------------------------------------------------- workers and the launch
static std::vector<Worker*> g_workers;
static pthread_mutex_t g_launch_mu = PTHREAD_MUTEX_INITIALIZER;

static void* worker_main(void* p) {
    Worker* w = static_cast<Worker*>(p);
    Launch* L = w->L;
    tls_w = w;
    unsigned fp_mode = enter_flush_mode();
    gridDim = dim3(L->grid[0], L->grid[1], L->grid[2]);
    blockDim = dim3(L->block[0], L->block[1], L->block[2]);
#ifdef EMU_TSAN
    w->tsan_sched = __tsan_get_current_fiber();
#endif
#ifndef EMU_SANITIZER
    stack_t ss, old_ss;
    if (!w->altstack) w->altstack = map_pages(kAltStack);
    ss.ss_sp = w->altstack;
    ss.ss_size = kAltStack;
    ss.ss_flags = 0;
    sigaltstack(&ss, &old_ss);
    if (sigsetjmp(w->jmp, 1)) {
        report_fault(w);
        sigaltstack(&old_ss, nullptr);
        leave_flush_mode(fp_mode);
        tls_w = nullptr;
        return nullptr;
    }
#endif
    if (!ensure_fibers(w, L->nthreads)) {
        fail(w, EMU_ERR_CONFIG, nullptr, "cannot map stacks for %u threads", L->nthreads);
    } else {
        // Blocks dealt round-robin: with >= 2 workers, neighbouring blocks always run on
        // different OS threads, which is what ThreadSanitizer needs to see races between blocks.
        for (uint64_t i = w->index; i < L->nblocks; i += L->nworkers) {
            if (L->failed.load(std::memory_order_relaxed)) break;
            run_block(w, L->order.empty() ? i : L->order[i]);
        }
    }
#ifdef EMU_TSAN
    __tsan_acquire(&w->done_sync);   // every fiber's writes happen before the copy back
    for (void* q : w->to_free) free(q);
    w->to_free.clear();
#endif
#ifndef EMU_SANITIZER
    sigaltstack(&old_ss, nullptr);
#endif
    leave_flush_mode(fp_mode);
    tls_w = nullptr;
    return nullptr;
}

// Every argument starts 256-byte aligned, as CuPy's allocations do (a float4 load on a device
// pointer is legal there). Without a sanitizer the buffer ends as close to a guard page as that
// allows; the up to 255 bytes in between hold kCanary, checked after the launch. A `precise`
// buffer ends exactly at the guard page instead (maybe misaligned): the rerun that names the
// thread of a write into that slack.
static const size_t kAlign = 256;
static const unsigned char kCanary = 0xA5;

static bool alloc_buffer(Buffer& B, const void* host, size_t nbytes, bool writable, bool precise) {
    B.nbytes = nbytes;
    B.writable = writable;
    B.slack = 0;
#ifdef EMU_SANITIZER
    (void)precise;
    void* p = nullptr;                                          // exact size: ASan's redzones
    if (posix_memalign(&p, kAlign, nbytes ? nbytes : 1)) return false;
    B.map = static_cast<char*>(p);
    B.map_len = nbytes;
    B.data = B.map;
    memcpy(B.data, host, nbytes);
#else
    size_t padded = precise ? nbytes : round_up(nbytes ? nbytes : 1, kAlign);
    size_t body = round_up(padded ? padded : 1, kPage);
    B.map_len = body + 2 * kPage;
    B.map = map_pages(B.map_len);
    if (!B.map) return false;
    mprotect(B.map, kPage, PROT_NONE);
    mprotect(B.map + kPage + body, kPage, PROT_NONE);
    B.data = B.map + kPage + body - padded;
    B.slack = padded - nbytes;
    memcpy(B.data, host, nbytes);
    memset(B.data + nbytes, kCanary, B.slack);
    if (!writable) mprotect(B.map + kPage, body, PROT_READ);
#endif
    return true;
}

// The first byte of the slack a kernel wrote (-1: none).
static int64_t slack_damage(const Buffer& B) {
    for (size_t i = 0; i < B.slack; ++i)
        if ((unsigned char)B.data[B.nbytes + i] != kCanary) return (int64_t)(B.nbytes + i);
    return -1;
}

static void free_buffer(Buffer& B) {
#ifdef EMU_SANITIZER
    free(B.map);
#else
    munmap(B.map, B.map_len);
#endif
}

static int launch_pass(void (*entry)(void**), int nargs, const emu_arg* args, const uint32_t* grid,
                       const uint32_t* block, uint64_t shmem, const emu_config* cfg, emu_result* res,
                       bool precise, bool* slack_hit);

extern "C" __attribute__((visibility("default")))
int emu_launch(void (*entry)(void**), int nargs, const emu_arg* args, const uint32_t* grid,
               const uint32_t* block, uint64_t shmem, const emu_config* cfg, emu_result* res) {
    pthread_mutex_lock(&g_launch_mu);
    bool slack_hit = false;
    int kind = launch_pass(entry, nargs, args, grid, block, shmem, cfg, res, false, &slack_hit);
    if (slack_hit) {
        // A write into an argument's alignment slack: rerun (same inputs, same schedule) with
        // every buffer ending at its guard page, so the fault names the thread. If the rerun
        // does not fault, the first pass's report (no thread) stands.
        emu_result first = *res;
        bool again = false;
        kind = launch_pass(entry, nargs, args, grid, block, shmem, cfg, res, true, &again);
        if (kind == 0) {
            *res = first;
            kind = res->kind;
        }
    }
    pthread_mutex_unlock(&g_launch_mu);
    return kind;
}

static int launch_pass(void (*entry)(void**), int nargs, const emu_arg* args, const uint32_t* grid,
                       const uint32_t* block, uint64_t shmem, const emu_config* cfg, emu_result* res,
                       bool precise, bool* slack_hit) {
    memset(res, 0, sizeof *res);
    res->arg = -1;
    res->is_write = -1;
    Launch L;
    L.entry = entry;
    L.res = res;
    L.cfg = *cfg;
    L.shmem = shmem;
    for (int d = 0; d < 3; ++d) { L.grid[d] = grid[d]; L.block[d] = block[d]; }
    L.nthreads = block[0] * block[1] * block[2];
    L.nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    L.deadline = now_s() + cfg->timeout;
    std::vector<void*> argv(nargs > 0 ? nargs : 1), slots(nargs > 0 ? nargs : 1);
    L.argv = argv.data();
    L.buf_of_arg.assign(nargs, -1);
    bool ok = true;
    for (int i = 0; i < nargs && ok; ++i) {
        const emu_arg& A = args[i];
        if (A.kind == EMU_ARG_VALUE) { argv[i] = A.host; continue; }
        if (A.alias >= 0) {
            int bi = L.buf_of_arg[A.alias];
            if (A.kind == EMU_ARG_PTR && !L.bufs[bi].writable) {
                // the same array also passed as non-const: keep its buffer writable
                L.bufs[bi].writable = 1;
#ifndef EMU_SANITIZER
                mprotect(L.bufs[bi].map + kPage, L.bufs[bi].map_len - 2 * kPage, PROT_READ | PROT_WRITE);
#endif
            }
            L.buf_of_arg[i] = bi;
            slots[i] = L.bufs[bi].data;
        } else {
            Buffer B;
            ok = alloc_buffer(B, A.host, A.nbytes, A.kind == EMU_ARG_PTR, precise);
            if (!ok) break;
            L.bufs.push_back(B);
            L.buf_of_arg[i] = (int)L.bufs.size() - 1;
            slots[i] = B.data;
        }
        argv[i] = &slots[i];
    }
    if (!ok) {
        res->kind = EMU_ERR_CONFIG;
        snprintf(res->msg, sizeof res->msg, "cannot allocate argument buffers: %s", strerror(errno));
    }
    if (ok && cfg->order != 0) {   // blocks run in the order of their threads' schedule too
        L.order.resize(L.nblocks);
        for (uint64_t i = 0; i < L.nblocks; ++i) L.order[i] = cfg->order == 1 ? L.nblocks - 1 - i : i;
        if (cfg->order == 2) {
            uint64_t s = cfg->seed ^ 0x5851f42d4c957f2dULL;
            for (uint64_t i = L.nblocks - 1; i > 0; --i) {
                uint64_t j = splitmix(s) % (i + 1), t = L.order[i];
                L.order[i] = L.order[j]; L.order[j] = t;
            }
        }
    }
    int nw = cfg->workers < 1 ? 1 : cfg->workers;
    if ((uint64_t)nw > L.nblocks) nw = (int)L.nblocks;
    if (ok) {
        while ((int)g_workers.size() < nw) g_workers.push_back(new Worker());
#ifndef EMU_SANITIZER
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        for (int i = 0; i < 5; ++i) sigaction(kSignals[i], &sa, &g_old_actions[i]);
#endif
        std::vector<pthread_t> threads(nw);
        L.nworkers = nw;
        for (int k = 0; k < nw; ++k) { g_workers[k]->L = &L; g_workers[k]->index = k; }
        for (int k = 1; k < nw; ++k) pthread_create(&threads[k], nullptr, worker_main, g_workers[k]);
        worker_main(g_workers[0]);
        for (int k = 1; k < nw; ++k) pthread_join(threads[k], nullptr);
#ifndef EMU_SANITIZER
        for (int i = 0; i < 5; ++i) sigaction(kSignals[i], &g_old_actions[i], nullptr);
#endif
    }
    for (int i = 0; ok && !L.failed.load() && i < nargs; ++i) {
        int bi = L.buf_of_arg[i];
        int64_t at = bi < 0 ? -1 : slack_damage(L.bufs[bi]);
        if (at < 0) continue;
        *slack_hit = true;
        res->kind = EMU_ERR_FAULT;
        res->where = EMU_AT_ARG_AFTER;
        res->arg = i;
        res->offset = at;
        res->is_write = 1;
        res->addr = (uint64_t)(uintptr_t)(L.bufs[bi].data + at);
        snprintf(res->msg, sizeof res->msg, "a write past the end of argument %d, found after the "
                 "launch in its 256-byte alignment padding", i);
        L.failed.store(1);
    }
    if (ok && !L.failed.load()) {
        for (int i = 0; i < nargs; ++i) {
            int bi = L.buf_of_arg[i];
            if (bi < 0 || args[i].kind != EMU_ARG_PTR) continue;
            Buffer& B = L.bufs[bi];
            memcpy(args[i].host, B.data, B.nbytes);
        }
    }
    for (Buffer& B : L.bufs) free_buffer(B);
    return res->kind;
}

extern "C" __attribute__((visibility("default"))) int emu_runtime_abi() { return 1; }

#ifdef EMU_ASAN
// AddressSanitizer calls this before it prints a report: say which CUDA thread was running.
extern "C" __attribute__((visibility("default"))) void __asan_on_error() {
    Worker* w = tls_w;
    if (w && w->cur)
        fprintf(stderr, "gpucnn emulator: the error below is in CUDA thread (%u,%u,%u) of block "
                "(%u,%u,%u)\n", w->cur->tid.x, w->cur->tid.y, w->cur->tid.z, blockIdx.x,
                blockIdx.y, blockIdx.z);
}
#endif

// ---------------------------------------------------------------- sanitizer builds: main()
#ifdef EMU_DRIVER
#include "driver.inc"
#endif
