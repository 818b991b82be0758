// The per-parameter reads of MLRAdamW's per-step check (module mlr_kernels._host), in one C++ loop.
//
// FlatBucket.sync reads, for every parameter at every step, its address and layout, its .grad,
// whether the gradient is present, dense and contiguous, and the gradient's address (for a DTensor
// parameter under FSDP2, those of its local shard and its gradient's). In Python each read is a
// call into torch (70-150 ns with warm caches); here they are made in one loop, and in issue 18's
// setting the whole check takes a fifth to a half of the time (bench/RESULTS.md). This is the only
// piece of the project built against torch's headers, so it is built only where torch is
// importable at build time (pip install --no-build-isolation) and used only by the torch it was
// built for (TORCH_VERSION); mlr_kernels/host_reads.py keeps the same reads in Python for
// everything else.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <cstring>

#ifndef MLR_TORCH_VERSION
#error "setup.py defines MLR_TORCH_VERSION: the torch version these headers come from"
#endif

namespace {

// Owns a new reference, released with it.
struct Owned {
  PyObject* object;
  explicit Owned(PyObject* o = nullptr) : object(o) {}
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() { Py_XDECREF(object); }
};

// A buffer view (of a bytearray), released with it.
struct Buffer {
  Py_buffer view{};
  bool get(PyObject* o, int flags) { return PyObject_GetBuffer(o, &view, flags) == 0; }
  ~Buffer() {
    if (view.obj) PyBuffer_Release(&view);
  }
};

bool is_plain(PyObject* o, PyObject* plain_types) {
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(plain_types); ++k) {
    if (reinterpret_cast<PyObject*>(Py_TYPE(o)) == PyTuple_GET_ITEM(plain_types, k)) return true;
  }
  return false;
}

// torch.Tensor or a subclass of it.
bool is_tensor_type(PyObject* o) {
  return PyType_Check(o) && PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(o),
                                             reinterpret_cast<PyTypeObject*>(THPVariableClass));
}

// "_local_tensor" and "_spec", interned when the module is made.
PyObject* local_tensor_name = nullptr;
PyObject* spec_name = nullptr;

// The local shard of DTensor ``o`` (a new reference) when ``o`` is of type ``shard_type`` exactly
// (a subclass may override what a read returns) and its shard of a plain type; else null, no
// error set.
PyObject* local_shard(PyObject* o, PyObject* shard_type, PyObject* plain_types) {
  if (reinterpret_cast<PyObject*>(Py_TYPE(o)) != shard_type) return nullptr;
  PyObject* local = PyObject_GetAttr(o, local_tensor_name);
  if (!local) {
    PyErr_Clear();
    return nullptr;
  }
  if (!is_plain(local, plain_types)) {
    Py_DECREF(local);
    return nullptr;
  }
  return local;
}

// Whether DTensors ``a`` and ``b`` hold the same spec object (mesh, placements, global shape), as a
// gradient FSDP2 made and its parameter do. Anything else, even an equal spec, is left to the
// Python reads, which compare the placements.
bool same_spec(PyObject* a, PyObject* b) {
  Owned spec_a(PyObject_GetAttr(a, spec_name)), spec_b(PyObject_GetAttr(b, spec_name));
  if (!spec_a.object || !spec_b.object) PyErr_Clear();
  return spec_a.object && spec_a.object == spec_b.object;
}

// What read() reads of one parameter: the tensor the segment is and its gradient (undefined for
// None). For a DTensor parameter (FSDP2), the local shards of both, whose Python objects it holds.
struct Reading {
  const at::Tensor* param = nullptr;
  const at::Tensor* grad = nullptr;
  Owned local, local_grad;
};

// Fills ``r`` for parameter ``p``, and returns whether read() reads it itself: a parameter of a
// plain type (with ``shard_type``, a DTensor of exactly that type whose shard is), with storage,
// whose gradient is None or a strided, contiguous tensor with storage (with ``shard_type``, a
// DTensor with the parameter's spec whose shard is one, of the shape, dtype and device of the
// parameter's shard). Else the Python reads do.
bool resolve(PyObject* p, PyObject* plain_types, PyObject* shard_type, Reading& r) {
  if (shard_type == Py_None) {
    if (!is_plain(p, plain_types)) return false;
    r.param = &THPVariable_Unpack(p);
    r.grad = &r.param->grad();
  } else {
    r.local.object = local_shard(p, shard_type, plain_types);
    if (!r.local.object) return false;
    r.param = &THPVariable_Unpack(r.local.object);
    r.grad = &THPVariable_Unpack(p).grad();
    if (r.grad->defined()) {
      // A DTensor's gradient is a DTensor, whose Python object exists: wrapping makes none.
      Owned grad_object(THPVariable_Wrap(*r.grad));
      if (!grad_object.object) {
        PyErr_Clear();
        return false;
      }
      r.local_grad.object = local_shard(grad_object.object, shard_type, plain_types);
      if (!r.local_grad.object) return false;
      // torch checks a DTensor gradient against its parameter as DTensors, never their shards,
      // which the kernel steps one with the other: another placement (or a shard replaced) would
      // be stepped silently. The Python reads refuse it.
      if (!same_spec(p, grad_object.object)) return false;
      r.grad = &THPVariable_Unpack(r.local_grad.object);
      if (r.grad->sizes() != r.param->sizes() || r.grad->scalar_type() != r.param->scalar_type() ||
          r.grad->device() != r.param->device()) {
        return false;
      }
    }
  }
  if (!r.param->has_storage()) return false;
  const at::Tensor& grad = *r.grad;
  return !grad.defined() ||
         (grad.layout() == c10::kStrided && grad.has_storage() && grad.is_contiguous());
}

// splitmix64's finalizer: a bijection of 64-bit words that spreads every input bit over the output.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A 64-bit hash of a tensor's dtype, sizes and strides. `p.data = p.data.t()` on a square parameter
// keeps its address but not its layout (`p.data = p.data.view(torch.float16)` of a bf16 one, its
// dtype): the check must see that as it sees a new address. Two layouts of one parameter hash
// alike with a probability of about 2^-64.
int64_t layout_hash(const at::Tensor& t) {
  uint64_t h = mix(static_cast<uint64_t>(t.scalar_type()));
  h = mix(h ^ static_cast<uint64_t>(t.dim()));
  const auto sizes = t.sizes(), strides = t.strides();
  for (size_t d = 0; d < sizes.size(); ++d) {
    h = mix(h ^ static_cast<uint64_t>(sizes[d]));
    h = mix(h ^ static_cast<uint64_t>(strides[d]));
  }
  return static_cast<int64_t>(h);
}

constexpr Py_ssize_t kWords = 3;  // what read() keeps per parameter, in int64 words

// What read() keeps of a parameter (resolved): its address, its gradient's or -1 for None (no
// tensor's address; 0 is an empty tensor's), and its layout_hash.
void addresses(const Reading& r, int64_t* out) {
  out[0] = reinterpret_cast<int64_t>(r.param->const_data_ptr());
  out[1] = r.grad->defined() ? reinterpret_cast<int64_t>(r.grad->const_data_ptr()) : -1;
  out[2] = layout_hash(*r.param);
}

// The lists read() returns: see there. ``before``: what seen holds, when it can be compared with
// (then ``now`` is not null either).
PyObject* read_lists(PyObject* params, PyObject* plain_types, PyObject* shard_type, int64_t* now,
                     const int64_t* before) {
  const Py_ssize_t n = PyList_GET_SIZE(params);
  Owned grads(PyList_New(n)), live(PyList_New(n)), grad_ptrs(PyList_New(n));
  if (!grads.object || !live.object || !grad_ptrs.object) return nullptr;
  // Without before, made at once; with it, at the first parameter that is not where and as it was
  // there, the entries before it taken from ``now``.
  Owned data_ptrs(before ? nullptr : PyList_New(n)), layouts(before ? nullptr : PyList_New(n));
  if (!before && (!data_ptrs.object || !layouts.object)) return nullptr;
  auto set_param_entries = [&](Py_ssize_t j, const int64_t* words) {
    PyObject* data_ptr = PyLong_FromVoidPtr(reinterpret_cast<void*>(words[0]));
    if (!data_ptr) return false;
    PyList_SET_ITEM(data_ptrs.object, j, data_ptr);
    PyObject* layout = PyLong_FromLongLong(words[2]);
    if (!layout) return false;
    PyList_SET_ITEM(layouts.object, j, layout);
    return true;
  };
  for (Py_ssize_t i = 0; i < n; ++i) {
    Reading r;
    if (!resolve(PyList_GET_ITEM(params, i), plain_types, shard_type, r)) Py_RETURN_NONE;
    int64_t kept[kWords];
    int64_t* words = now ? now + kWords * i : kept;
    addresses(r, words);
    if (!data_ptrs.object && (words[0] != before[kWords * i] || words[2] != before[kWords * i + 2])) {
      data_ptrs.object = PyList_New(n);
      layouts.object = PyList_New(n);
      if (!data_ptrs.object || !layouts.object) return nullptr;
      for (Py_ssize_t j = 0; j < i; ++j) {
        if (!set_param_entries(j, now + kWords * j)) return nullptr;
      }
    }
    if (data_ptrs.object && !set_param_entries(i, words)) return nullptr;
    const at::Tensor& grad = *r.grad;
    PyObject* grad_object = Py_None;
    std::uintptr_t grad_ptr = 0;
    if (r.local_grad.object) {  // a DTensor's gradient: its local shard, of a plain type
      grad_object = r.local_grad.object;
      Py_INCREF(grad_object);
    } else if (grad.defined()) {
      grad_object = THPVariable_Wrap(grad);  // the gradient's Python object (made if it has none)
      if (!grad_object) return nullptr;
      if (!is_plain(grad_object, plain_types)) {
        Py_DECREF(grad_object);
        Py_RETURN_NONE;
      }
    } else {
      Py_INCREF(Py_None);
    }
    if (grad.defined()) grad_ptr = reinterpret_cast<std::uintptr_t>(grad.const_data_ptr());
    PyList_SET_ITEM(grads.object, i, grad_object);
    PyObject* present = grad.defined() ? Py_True : Py_False;
    Py_INCREF(present);
    PyList_SET_ITEM(live.object, i, present);
    PyObject* address = PyLong_FromUnsignedLongLong(grad_ptr);
    if (!address) return nullptr;
    PyList_SET_ITEM(grad_ptrs.object, i, address);
  }
  if (!data_ptrs.object) {  // every parameter as in before
    return PyTuple_Pack(5, Py_None, grads.object, live.object, grad_ptrs.object, Py_None);
  }
  Owned columns(PyTuple_Pack(1, layouts.object));
  if (!columns.object) return nullptr;
  return PyTuple_Pack(5, data_ptrs.object, grads.object, live.object, grad_ptrs.object, columns.object);
}

// read(params, plain_types, seen, pending, shard_type) -> True, (data_ptrs, grads, live, grad_ptrs,
// layouts) or None.
//
// params: a list of tensors. plain_types: a tuple of the types whose attributes no Python code
// overrides (torch.Tensor, torch.nn.Parameter): a parameter or gradient of another type could
// define .grad or data_ptr() through __torch_function__, so it is left to the Python reads.
// shard_type: None, or DTensor: then every parameter is a DTensor, and what is read is its local
// shard (``_local_tensor``) and its gradient's local shard, as the Python reads read them.
// pending: None, or a writable buffer of 24 bytes per parameter into which what addresses() keeps
// of each parameter is written as three int64; seen: None, or what pending held after the last
// check the caller completed.
//
// Returns None (the caller reads in Python, which also raises the right errors) unless every
// parameter is one it reads itself (see resolve()), or when torch threw (a C++ exception must not
// cross into the interpreter; the Python reads then raise torch's error). Else True when pending now equals
// seen: every parameter and gradient is where, and in the layout, the last check found it, and
// nothing is built: the steady state of a training loop. Else four lists as the Python reads make
// them (0 for the address of a missing gradient) and, for the layouts, a tuple of one list (each
// parameter's layout_hash; the Python reads give three: shapes, strides, dtypes), and pending filled;
// data_ptrs and layouts are None when every parameter is where and as seen has it (the gradients
// moved: after zero_grad() and backward), which saves comparing equal lists in Python. The first
// pass compares up to the first parameter that moved (the first, when zero_grad() re-allocated
// every gradient), and the second builds the lists: no parameter is read twice from memory
// unless the steady state broke at it.
//
// Raises TypeError for arguments of other types (types that are not tensor types too), ValueError for
// a pending of another size.
PyObject* read(PyObject*, PyObject* args) {
  PyObject *params, *plain_types, *seen_object, *pending_object, *shard_type;
  if (!PyArg_ParseTuple(args, "O!O!OOO", &PyList_Type, &params, &PyTuple_Type, &plain_types,
                        &seen_object, &pending_object, &shard_type)) {
    return nullptr;
  }
  // The reads unpack whatever has one of these types as a tensor: each must be a tensor type.
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(plain_types); ++k) {
    if (!is_tensor_type(PyTuple_GET_ITEM(plain_types, k))) {
      PyErr_SetString(PyExc_TypeError, "plain_types holds tensor types");
      return nullptr;
    }
  }
  if (shard_type != Py_None && !is_tensor_type(shard_type)) {
    PyErr_SetString(PyExc_TypeError, "shard_type is None or a tensor type");
    return nullptr;
  }
  const Py_ssize_t n = PyList_GET_SIZE(params);
  const Py_ssize_t size = kWords * n * static_cast<Py_ssize_t>(sizeof(int64_t));
  Buffer seen, pending;
  if (pending_object != Py_None) {
    if (!pending.get(pending_object, PyBUF_WRITABLE)) return nullptr;
    if (pending.view.len != size) {
      PyErr_SetString(PyExc_ValueError, "pending holds 24 bytes per parameter");
      return nullptr;
    }
    if (seen_object != Py_None && !seen.get(seen_object, PyBUF_SIMPLE)) return nullptr;
  }
  int64_t* now = pending.view.obj ? static_cast<int64_t*>(pending.view.buf) : nullptr;
  try {
    const int64_t* before = nullptr;
    if (now && seen.view.obj && seen.view.len == size) {  // up to the first parameter that moved
      before = static_cast<const int64_t*>(seen.view.buf);
      Py_ssize_t i = 0;
      for (; i < n; ++i) {
        Reading r;
        if (!resolve(PyList_GET_ITEM(params, i), plain_types, shard_type, r)) Py_RETURN_NONE;
        int64_t* words = now + kWords * i;
        addresses(r, words);
        if (std::memcmp(words, before + kWords * i, sizeof(int64_t) * kWords) != 0) break;
      }
      if (i == n) Py_RETURN_TRUE;
    }
    return read_lists(params, plain_types, shard_type, now, before);
  } catch (const std::exception&) {
    PyErr_Clear();  // a torch error may have carried a Python one: the Python reads raise it again
    Py_RETURN_NONE;
  }
}

// A float, int or bool, or a tuple of them: values whose == runs no Python code.
bool plain_value(PyObject* o) {
  if (PyFloat_CheckExact(o) || PyLong_CheckExact(o) || PyBool_Check(o)) return true;
  if (!PyTuple_CheckExact(o)) return false;
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(o); ++k) {
    if (!plain_value(PyTuple_GET_ITEM(o, k))) return false;
  }
  return true;
}

// same_group_values(groups, keys, optional_keys, seen) -> bool.
//
// groups: a list of dicts (the param groups); keys: a tuple of str; optional_keys: a tuple of
// (key, default) pairs; seen: what MLRAdamW's Python reads gave at the last step, a tuple of the
// list of every group's values of ``keys`` (one tuple per group) and, per optional key, the list
// of every group's ``group.get(key, default)``. True when every group holds the same values now
// (each the same object or ==), without building those lists again; False where a value differs,
// a key or group is missing or added, or seen has another shape (the caller then reads in Python,
// which raises what is to be raised). Only for values that cannot change in place: == is asked of
// floats, ints, bools and tuples of them (the caller reads tensors and lists in Python). Raises
// TypeError for arguments of other types, and what a value's == raises.
PyObject* same_group_values(PyObject*, PyObject* args) {
  PyObject *groups, *keys, *optional_keys, *seen;
  if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyList_Type, &groups, &PyTuple_Type, &keys, &PyTuple_Type,
                        &optional_keys, &PyTuple_Type, &seen)) {
    return nullptr;
  }
  const Py_ssize_t n = PyList_GET_SIZE(groups), num_keys = PyTuple_GET_SIZE(keys);
  const Py_ssize_t num_optional = PyTuple_GET_SIZE(optional_keys);
  for (Py_ssize_t k = 0; k < num_optional; ++k) {
    PyObject* pair = PyTuple_GET_ITEM(optional_keys, k);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
      PyErr_SetString(PyExc_TypeError, "optional_keys holds (key, default) pairs");
      return nullptr;
    }
  }
  if (PyTuple_GET_SIZE(seen) != 1 + num_optional) Py_RETURN_FALSE;
  for (Py_ssize_t k = 0; k <= num_optional; ++k) {
    PyObject* column = PyTuple_GET_ITEM(seen, k);
    if (!PyList_Check(column) || PyList_GET_SIZE(column) != n) Py_RETURN_FALSE;
  }
  // 1 when equal, 0 when not (or not both plain values: == of another type could run Python code
  // that changes the groups under this loop), -1 on an error (raised).
  auto same = [](PyObject* now, PyObject* before) {
    if (now == before) return 1;
    if (!plain_value(now) || !plain_value(before)) return 0;
    return PyObject_RichCompareBool(now, before, Py_EQ);
  };
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* group = PyList_GET_ITEM(groups, i);
    PyObject* row = PyList_GET_ITEM(PyTuple_GET_ITEM(seen, 0), i);
    // A dict subclass may override __getitem__, which the Python reads call: left to them.
    if (!PyDict_CheckExact(group) || !PyTuple_Check(row) || PyTuple_GET_SIZE(row) != num_keys) Py_RETURN_FALSE;
    for (Py_ssize_t k = 0; k < num_keys; ++k) {
      PyObject* value = PyDict_GetItemWithError(group, PyTuple_GET_ITEM(keys, k));
      if (!value) {
        if (PyErr_Occurred()) return nullptr;
        Py_RETURN_FALSE;
      }
      const int equal = same(value, PyTuple_GET_ITEM(row, k));
      if (equal < 0) return nullptr;
      if (!equal) Py_RETURN_FALSE;
    }
    for (Py_ssize_t k = 0; k < num_optional; ++k) {
      PyObject* pair = PyTuple_GET_ITEM(optional_keys, k);
      PyObject* value = PyDict_GetItemWithError(group, PyTuple_GET_ITEM(pair, 0));
      if (!value) {
        if (PyErr_Occurred()) return nullptr;
        value = PyTuple_GET_ITEM(pair, 1);
      }
      const int equal = same(value, PyList_GET_ITEM(PyTuple_GET_ITEM(seen, 1 + k), i));
      if (equal < 0) return nullptr;
      if (!equal) Py_RETURN_FALSE;
    }
  }
  Py_RETURN_TRUE;
}

// write_lr_column(lrs, group_index, lr_mults, rows, column) -> bool or None.
//
// The LR column of the segment table's host copy: rows[s, column] = lrs[group_index[s]] *
// lr_mults[s] for every segment s, in float64 (as numpy computes it). lrs: the groups' learning
// rates; group_index (int64), lr_mults (float64): one per segment; rows: the C-contiguous float64
// [segments, columns] host copy. Returns whether any value changed; None, writing nothing, when
// a learning rate is not a plain float, int or bool (a tensor, a numpy scalar: the caller's
// numpy or device path takes it). Raises ValueError for buffers of other sizes, IndexError for a
// group index out of range.
PyObject* write_lr_column(PyObject*, PyObject* args) {
  PyObject *lrs, *group_index_object, *lr_mults_object, *rows_object;
  int column;
  if (!PyArg_ParseTuple(args, "O!OOOi", &PyList_Type, &lrs, &group_index_object, &lr_mults_object,
                        &rows_object, &column)) {
    return nullptr;
  }
  const Py_ssize_t num_groups = PyList_GET_SIZE(lrs);
  for (Py_ssize_t k = 0; k < num_groups; ++k) {
    PyObject* lr = PyList_GET_ITEM(lrs, k);
    if (!PyFloat_CheckExact(lr) && !PyLong_CheckExact(lr) && !PyBool_Check(lr)) Py_RETURN_NONE;
  }
  Buffer group_index, lr_mults, rows;
  if (!group_index.get(group_index_object, PyBUF_C_CONTIGUOUS) ||
      !lr_mults.get(lr_mults_object, PyBUF_C_CONTIGUOUS) ||
      !rows.get(rows_object, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)) {
    return nullptr;
  }
  const Py_ssize_t n = lr_mults.view.len / static_cast<Py_ssize_t>(sizeof(double));
  if (group_index.view.len != n * static_cast<Py_ssize_t>(sizeof(int64_t)) || rows.view.ndim != 2 ||
      rows.view.shape[0] != n || column < 0 || column >= rows.view.shape[1] ||
      rows.view.itemsize != static_cast<Py_ssize_t>(sizeof(double))) {
    PyErr_SetString(PyExc_ValueError, "write_lr_column: buffers of other sizes than the segments'");
    return nullptr;
  }
  const int64_t* index = static_cast<const int64_t*>(group_index.view.buf);
  const double* mult = static_cast<const double*>(lr_mults.view.buf);
  double* lr_of_segment = static_cast<double*>(rows.view.buf) + column;
  const Py_ssize_t stride = rows.view.shape[1];
  bool changed = false;
  for (Py_ssize_t s = 0; s < n; ++s) {
    if (index[s] < 0 || index[s] >= num_groups) {
      PyErr_SetString(PyExc_IndexError, "write_lr_column: a group index out of range");
      return nullptr;
    }
    const double lr = PyFloat_AsDouble(PyList_GET_ITEM(lrs, index[s]));  // ints and bools too
    if (lr == -1.0 && PyErr_Occurred()) return nullptr;
    const double value = lr * mult[s];
    if (!(lr_of_segment[s * stride] == value)) {
      lr_of_segment[s * stride] = value;
      changed = true;
    }
  }
  return PyBool_FromLong(changed);
}

PyMethodDef methods[] = {
    {"write_lr_column", write_lr_column, METH_VARARGS,
     "write_lr_column(lrs, group_index, lr_mults, rows, column) -> bool or None: see "
     "mlr_kernels/host_reads.py."},
    {"same_group_values", same_group_values, METH_VARARGS,
     "same_group_values(groups, keys, optional_keys, seen) -> bool: see mlr_kernels/host_reads.py."},
    {"read", read, METH_VARARGS,
     "read(params, plain_types, seen, pending, shard_type) -> True, (data_ptrs, grads, live, "
     "grad_ptrs, layouts) or None: see mlr_kernels/host_reads.py."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_host",
                      "MLRAdamW's per-step reads of parameters and gradients, in C++ "
                      "(built against one torch version: TORCH_VERSION).",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__host() {
  local_tensor_name = PyUnicode_InternFromString("_local_tensor");
  spec_name = PyUnicode_InternFromString("_spec");
  if (!local_tensor_name || !spec_name) return nullptr;
  PyObject* m = PyModule_Create(&module);
  if (m && PyModule_AddStringConstant(m, "TORCH_VERSION", MLR_TORCH_VERSION) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
