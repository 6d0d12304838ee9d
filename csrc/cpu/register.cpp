// Operator schemas (namespace mentormix_cpp) and their CPU implementations; the Python module
// mentormix_fast._C exists only so that `import` loads this library (the ops are reached through
// torch.ops.mentormix_cpp). The CUDA extension (csrc/cuda) adds CUDA kernels to the same schemas.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

#ifndef MENTORMIX_CPU_ISA
#define MENTORMIX_CPU_ISA "default"
#endif

namespace {
// The instruction set the kernels were compiled for (setup.py: MENTORMIX_CPU_ISA).
std::string cpu_isa() { return MENTORMIX_CPU_ISA; }
}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "MentorMix C++ CPU kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mentormix_cpp, m) {
  m.def(
      "weights_and_sample(Tensor logits, Tensor target, Tensor loss_ma, Tensor epoch, Tensor mentornet, "
      "Tensor? uniform, Tensor? beta, Generator? generator, float alpha, int rank, float decay, int burn_in_epoch) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mix(Tensor x, Tensor partner, Tensor lam) -> Tensor");
  m.def(
      "mixed_loss_forward(Tensor logits, Tensor target, Tensor partner, Tensor lam, Tensor loss_ma_mixed, "
      "Tensor epoch, Tensor mentornet, int rank, float decay, int burn_in_epoch, bool second_reweight, "
      "bool grad_in_forward) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "mixed_loss_backward(Tensor grad_output, Tensor logits, Tensor target, Tensor partner, Tensor lam, "
      "Tensor lse, Tensor weights) -> Tensor");
  m.def("scale_grad_(Tensor(a!) grad, Tensor grad_output) -> ()");
  m.def("cpu_isa() -> str", &cpu_isa);
}

TORCH_LIBRARY_IMPL(mentormix_cpp, CPU, m) {
  m.impl("weights_and_sample", &mentormix::cpu::weights_and_sample);
  m.impl("mix", &mentormix::cpu::mix);
  m.impl("mixed_loss_forward", &mentormix::cpu::mixed_loss_forward);
  m.impl("mixed_loss_backward", &mentormix::cpu::mixed_loss_backward);
  m.impl("scale_grad_", &mentormix::cpu::scale_grad_);
}
