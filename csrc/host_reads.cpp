// The per-parameter reads of MLRAdamW's per-step check (module mlr_kernels._host), in one C++ loop.
//
// FlatBucket.sync reads, for every parameter at every step, its address, its .grad, whether the
// gradient is present, dense and contiguous, and the gradient's address. In Python each read is a
// call into torch (70-90 ns); here the four together cost 20-40 ns per parameter. This is the only
// piece of the project built against torch's headers, so it is built only where torch is importable
// at build time (pip install --no-build-isolation) and used only by the torch it was built for
// (TORCH_VERSION); mlr_kernels/host_reads.py keeps the same reads in Python for everything else.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>

#ifndef MLR_TORCH_VERSION
#error "setup.py defines MLR_TORCH_VERSION: the torch version these headers come from"
#endif

namespace {

// Owns a new reference; releases it unless released to the caller.
struct Owned {
  PyObject* object;
  explicit Owned(PyObject* o) : object(o) {}
  ~Owned() { Py_XDECREF(object); }
  PyObject* release() {
    PyObject* o = object;
    object = nullptr;
    return o;
  }
};

// read(params, plain_types) -> (data_ptrs, grads, live, grad_ptrs) or None.
//
// params: a list of tensors. plain_types: a tuple of the types whose attributes no Python code
// overrides (torch.Tensor, torch.nn.Parameter): a parameter or gradient of another type could
// define .grad or data_ptr() through __torch_function__, so it is left to the Python reads.
// Returns None (and the caller reads in Python, which also raises the right errors) unless every
// parameter is of a plain type and has storage, and every gradient is None or a plain, strided,
// contiguous tensor with storage. Never raises for a tensor; TypeError for a non-list argument.
PyObject* read(PyObject*, PyObject* args) {
  PyObject* params;
  PyObject* plain_types;
  if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &params, &PyTuple_Type, &plain_types)) {
    return nullptr;
  }
  auto plain = [plain_types](PyObject* o) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(plain_types); ++k) {
      if (reinterpret_cast<PyObject*>(Py_TYPE(o)) == PyTuple_GET_ITEM(plain_types, k)) return true;
    }
    return false;
  };
  const Py_ssize_t n = PyList_GET_SIZE(params);
  Owned data_ptrs(PyList_New(n)), grads(PyList_New(n)), live(PyList_New(n)), grad_ptrs(PyList_New(n));
  if (!data_ptrs.object || !grads.object || !live.object || !grad_ptrs.object) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyList_GET_ITEM(params, i);
    if (!plain(p)) Py_RETURN_NONE;
    const at::Tensor& param = THPVariable_Unpack(p);
    if (!param.has_storage()) Py_RETURN_NONE;
    PyObject* data_ptr = PyLong_FromVoidPtr(const_cast<void*>(param.const_data_ptr()));
    if (!data_ptr) return nullptr;
    PyList_SET_ITEM(data_ptrs.object, i, data_ptr);
    const at::Tensor& grad = param.grad();
    PyObject* grad_object = Py_None;
    std::uintptr_t grad_ptr = 0;
    if (grad.defined()) {
      if (grad.layout() != c10::kStrided || !grad.has_storage() || !grad.is_contiguous()) Py_RETURN_NONE;
      grad_object = THPVariable_Wrap(grad);  // the gradient's Python object (made if it has none)
      if (!grad_object) return nullptr;
      if (!plain(grad_object)) {
        Py_DECREF(grad_object);
        Py_RETURN_NONE;
      }
      grad_ptr = reinterpret_cast<std::uintptr_t>(grad.const_data_ptr());
    } else {
      Py_INCREF(Py_None);
    }
    PyList_SET_ITEM(grads.object, i, grad_object);
    PyObject* present = grad.defined() ? Py_True : Py_False;
    Py_INCREF(present);
    PyList_SET_ITEM(live.object, i, present);
    PyObject* address = PyLong_FromUnsignedLongLong(grad_ptr);
    if (!address) return nullptr;
    PyList_SET_ITEM(grad_ptrs.object, i, address);
  }
  return PyTuple_Pack(4, data_ptrs.object, grads.object, live.object, grad_ptrs.object);
}

PyMethodDef methods[] = {
    {"read", read, METH_VARARGS,
     "read(params, plain_types) -> (data_ptrs, grads, live, grad_ptrs) or None: see "
     "mlr_kernels/host_reads.py."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_host",
                      "MLRAdamW's per-step reads of parameters and gradients, in C++ "
                      "(built against one torch version: TORCH_VERSION).",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__host() {
  PyObject* m = PyModule_Create(&module);
  if (m && PyModule_AddStringConstant(m, "TORCH_VERSION", MLR_TORCH_VERSION) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
