// mentormix_fast._C_cuda: importing it registers the CUDA kernels of the mentormix_cpp ops
// (ops_cuda.cpp); mentormix_fast._C, which defines the schemas, must be imported first.
#include <Python.h>

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", "MentorMix CUDA kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
