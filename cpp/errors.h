// The errors the core throws on purpose. wrinklefree_rt/_core_errors.h maps each one to its
// Python class (wrinklefree_rt/errors.py); any other std::invalid_argument is a ValueError.
#pragma once
#include <stdexcept>
#include <string>

namespace wfrt {

// The KV pool cannot hold what was asked; the caller waits and retries.
struct KVCacheFull : std::runtime_error { using std::runtime_error::runtime_error; };
// Every KV slot (one per live sequence) is in use.
struct NoFreeSlot : std::runtime_error { using std::runtime_error::runtime_error; };
// A step was cancelled between layers (BitNetBatchEngine::cancel()).
struct StepCancelled : std::runtime_error { using std::runtime_error::runtime_error; };

// A tensor handed to the engine does not fit the model: names the tensor and the problem.
struct BadTensor : std::invalid_argument {
    BadTensor(std::string tensor_name, std::string what_wrong)
        : std::invalid_argument("tensor '" + tensor_name + "': " + what_wrong),
          tensor(std::move(tensor_name)), problem(std::move(what_wrong)) {}
    std::string tensor, problem;
};

}  // namespace wfrt
