#include "thread_pool.h"

#include <fstream>
#include <set>
#include <string>

#if defined(__linux__)
#include <sched.h>
#endif

namespace wfrt {

int physical_core_count() {
    int logical = static_cast<int>(std::thread::hardware_concurrency());
    if (logical <= 0) logical = 1;
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return logical;
    std::set<std::string> cores;
    int allowed = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &set)) continue;
        ++allowed;
        std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
        std::string p, c;
        if (!(pkg >> p) || !(core >> c)) return allowed > 0 ? allowed : logical;
        cores.insert(p + ":" + c);
    }
    if (!cores.empty()) return static_cast<int>(cores.size());
    if (allowed > 0) return allowed;
#endif
    return logical;
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int t = 1; t < n_threads_; ++t) workers_.emplace_back(&ThreadPool::worker, this, t);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_tasks(int thread_index) {
    for (;;) {
        int task = next_task_.fetch_add(1, std::memory_order_relaxed);
        if (task >= n_tasks_) break;
        fn_(ctx_, task, thread_index);
    }
}

void ThreadPool::run(int n_tasks, TaskFn fn, void* ctx) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; ++t) fn(ctx, t, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        fn_ = fn;
        ctx_ = ctx;
        n_tasks_ = n_tasks;
        next_task_.store(0, std::memory_order_relaxed);
        busy_.store(n_threads_ - 1, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_tasks(0);
    while (busy_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void ThreadPool::worker(int thread_index) {
    unsigned seen = 0;
    for (;;) {
        // Spin a little for the next loop of the same step before falling asleep.
        for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        if (generation_.load(std::memory_order_acquire) == seen) {
            std::unique_lock<std::mutex> lock(mu_);
            wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            seen = generation_.load(std::memory_order_acquire);
            if (stop_) return;
        }
        run_tasks(thread_index);
        busy_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

}  // namespace wfrt
