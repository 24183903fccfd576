#include "thread_pool.h"

#include <algorithm>
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
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_tasks(const Job& job, int thread_index) {
    uint64_t cur = claim_.load(std::memory_order_acquire);
    for (;;) {
        if (static_cast<unsigned>(cur >> 32) != job.generation) return;
        const int task = static_cast<int>(cur & 0xffffffffu);
        if (task >= job.n_tasks) return;
        if (!claim_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) continue;
        job.fn(job.ctx, task, thread_index);
        done_.fetch_add(1, std::memory_order_acq_rel);
        cur = claim_.load(std::memory_order_acquire);
    }
}

namespace {
using Clock = std::chrono::steady_clock;
// A worker that another process pushed off its core holds the loop's last task until the
// scheduler runs it again (milliseconds, against loops of about one): then every sync point costs
// a time slice and two threads run slower than one. When the caller, done with its share,
// waits longer than it worked (and at least kLateFloor: waking a sleeping worker takes tens of
// microseconds), the next loops run on the caller alone for kSerialSpell, then threads are tried
// again. On a quiet machine workers finish within a task of the caller and this never triggers.
constexpr auto kLateFloor = std::chrono::microseconds(500);
constexpr auto kSerialSpell = std::chrono::milliseconds(100);
}  // namespace

void ThreadPool::run(int n_tasks, TaskFn fn, void* ctx) {
    if (n_tasks <= 0) return;
    const Clock::time_point start = Clock::now();
    if (n_threads_ == 1 || n_tasks == 1 || start < serial_until_) {
        for (int t = 0; t < n_tasks; ++t) fn(ctx, t, 0);
        return;
    }
    Job job;
    {
        std::lock_guard<std::mutex> lock(mu_);
        job = Job{job_.generation + 1, n_tasks, fn, ctx};
        job_ = job;
        done_.store(0, std::memory_order_relaxed);
        claim_.store(static_cast<uint64_t>(job.generation) << 32, std::memory_order_release);
        generation_.store(job.generation, std::memory_order_release);
    }
    wake_.notify_all();
    run_tasks(job, 0);
    const Clock::time_point own_done = Clock::now();
    while (done_.load(std::memory_order_acquire) != n_tasks) std::this_thread::yield();
    const Clock::time_point end = Clock::now();
    if (end - own_done > std::max<Clock::duration>(own_done - start, kLateFloor)) serial_until_ = end + kSerialSpell;
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
        Job job;
        {
            std::unique_lock<std::mutex> lock(mu_);
            wake_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
            if (stop_) return;
            job = job_;
        }
        seen = job.generation;
        run_tasks(job, thread_index);
    }
}

}  // namespace wfrt
