// Makes the extension importable as the Python module `npdg._C`. It defines no Python functions:
// loading the shared library runs the TORCH_LIBRARY registrations in compact.cpp, and the ops are
// then reached through torch.ops.npdg.*. (Not part of the CMake/libtorch build, which has no Python.)
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "npdg compaction ops (see torch.ops.npdg)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
