// C++ exception -> Python exception, for `except +raise_py_error` in _core.pxd.
// Lives beside the Cython module because it needs Python.h (cpp/ stays free of Python).
#pragma once
#include <Python.h>

#include <new>
#include <stdexcept>

#include "errors.h"

static PyObject* wfrt_kv_full_error = nullptr;
static PyObject* wfrt_no_slot_error = nullptr;
static PyObject* wfrt_cancelled_error = nullptr;
static PyObject* wfrt_model_format_error = nullptr;

// Called once at import with the classes from wrinklefree_rt.errors (kept alive by the module).
static void set_error_types(PyObject* kv_full, PyObject* no_slot, PyObject* cancelled, PyObject* model_format) {
    wfrt_kv_full_error = kv_full;
    wfrt_no_slot_error = no_slot;
    wfrt_cancelled_error = cancelled;
    wfrt_model_format_error = model_format;
}

// Called by Cython inside its catch block, with the GIL held.
static void raise_py_error() {
    try {
        throw;
    } catch (const wfrt::KVCacheFull& e) {
        PyErr_SetString(wfrt_kv_full_error, e.what());
    } catch (const wfrt::NoFreeSlot& e) {
        PyErr_SetString(wfrt_no_slot_error, e.what());
    } catch (const wfrt::StepCancelled& e) {
        PyErr_SetString(wfrt_cancelled_error, e.what());
    } catch (const wfrt::BadTensor& e) {
        PyObject* err = PyObject_CallFunction(wfrt_model_format_error, "sss", "<tensors given to BitNetBatchEngine>",
                                              e.tensor.c_str(), e.problem.c_str());
        if (err != nullptr) {
            PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err)), err);
            Py_DECREF(err);
        }
    } catch (const std::invalid_argument& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
    }
}
