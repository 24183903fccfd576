# C++ declarations of the core (cpp/config.h, tensor.h, engine.h). Everything that can throw is
# `except +`. The enums are mirrored as Python IntEnums in _core.pyx, from these values.
from libc.stdint cimport int8_t, int32_t, int64_t
from libcpp cimport bool
from libcpp.string cimport string
from libcpp.vector cimport vector


cdef extern from "_core_errors.h":
    # Turns the C++ exception being handled into the matching Python exception.
    void raise_py_error()
    void set_error_types(object kv_full, object no_slot, object cancelled, object model_format)


cdef extern from "config.h" namespace "wfrt" nogil:
    cdef cppclass ModelSpec:
        int vocab_size, hidden_size, intermediate_size, num_layers
        int num_heads, num_kv_heads, head_dim, max_positions
        float rms_norm_eps, rope_theta
        bool tie_word_embeddings

    cdef enum class LmHeadPrecision(int):
        F32
        I8
        Q4


cdef extern from "tensor.h" namespace "wfrt" nogil:
    cdef enum class CppTensorDType "wfrt::TensorDType"(int):
        F32
        TernaryCodes
        TernaryPacked
        I8

    cdef cppclass TensorView:
        const void* data
        CppTensorDType dtype
        vector[int64_t] shape
        float scale

    cdef cppclass NamedTensor:
        string name
        TensorView view


cdef extern from "engine.h" namespace "wfrt" nogil:
    cdef enum class CppOutMode "wfrt::OutMode"(int8_t):
        Argmax
        Sample
        Logits

    cdef cppclass EngineOptions:
        int num_threads, max_slots, kv_pages, page_size
        LmHeadPrecision lm_head
        string isa
        string ternary_kernel
        string ternary_packing

    cdef cppclass StepInput:
        int n_rows
        const int32_t* slot
        const int32_t* position
        const int32_t* token
        int n_out
        const int32_t* out_row
        const CppOutMode* out_mode
        const int32_t* exclude
        const float* temperature
        const int32_t* top_k
        const float* top_p
        const float* uniform

    cdef cppclass StepOutput:
        int32_t* token
        float* prob
        float* logits

    cdef cppclass CppEngine "wfrt::BitNetBatchEngine":
        CppEngine(const ModelSpec& cfg, const EngineOptions& opt,
                          const vector[NamedTensor]& tensors) except +raise_py_error
        int alloc_sequence(int attn_block) except +raise_py_error
        void reserve(int slot, int n_positions) except +raise_py_error
        void free_sequence(int slot) except +raise_py_error
        bool can_reserve(int slot, int n_positions) except +raise_py_error
        void step(const StepInput& inp, StepOutput& out) except +raise_py_error
        void cancel()
        const ModelSpec& config()
        int pages_total()
        int pages_free()
        int page_size()
        int slots_free()
        int num_threads()
        const char* isa()
        string ternary_plan()
        size_t weight_bytes()

    void release_free_heap_cpp "wfrt::release_free_heap"()


cdef extern from "model.h" namespace "wfrt" nogil:
    void quantize_rows_i8_per_row(const float* w, int K, int n0, int n1, int8_t* q, float* scale)
