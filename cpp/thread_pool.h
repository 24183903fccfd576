// A fixed set of worker threads that run one parallel loop at a time.
//
// The engine issues a few hundred short loops per step (one per GEMM and attention pass), so
// workers spin briefly on a generation counter before sleeping: waking a sleeping thread costs
// tens of microseconds, which would dominate single-token decode.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>

namespace wfrt {

// Physical cores this process may run on (hyper-threads share one core's SIMD units and made
// the kernels slower), falling back to the logical count when the topology is unknown.
int physical_core_count();

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(task, thread) for every task in [0, n_tasks), spread over the pool; the calling
    // thread takes part as thread 0. Returns when all tasks are done. Not reentrant.
    // Under CPU contention the pool may run loops on the calling thread alone for a while (see
    // run()); which thread runs a task never changes a result.
    // Takes the callable by reference (no std::function) so a loop allocates nothing.
    template <class F>
    void parallel_for(int n_tasks, F&& fn) {
        using Fn = std::remove_reference_t<F>;
        run(n_tasks, [](void* ctx, int task, int thread) { (*static_cast<Fn*>(ctx))(task, thread); },
            const_cast<void*>(static_cast<const void*>(&fn)));
    }

private:
    using TaskFn = void (*)(void*, int, int);
    void run(int n_tasks, TaskFn fn, void* ctx);
    // What one parallel_for hands out; workers copy it under the mutex.
    struct Job {
        unsigned generation = 0;
        int n_tasks = 0;
        TaskFn fn = nullptr;
        void* ctx = nullptr;
    };
    void worker(int thread_index);
    void run_tasks(const Job& job, int thread_index);

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::condition_variable wake_;
    std::atomic<unsigned> generation_{0};
    Job job_;                            // guarded by mu_
    // (generation << 32) | next task index: a worker that wakes late for an old loop cannot
    // claim a task of the next one, so the caller never waits for a descheduled idle worker.
    std::atomic<uint64_t> claim_{0};
    std::atomic<int> done_{0};
    bool stop_ = false;
    // Until then, loops run on the calling thread alone (only the caller touches it).
    std::chrono::steady_clock::time_point serial_until_{};
};

}  // namespace wfrt
