// Operator schemas (namespace mentormix_cpp, the op contract of docs/SPEC.md §5) and their CPU
// implementations; the Python module mentormix_fast._C exists only so that `import` loads this
// library (the ops are reached through torch.ops.mentormix_cpp). meta.cpp adds the Meta kernels
// (output shapes, for torch.compile); the CUDA extension (csrc/cuda) adds CUDA kernels.
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
  m.def("ce(Tensor logits, Tensor target, Tensor? partner, Tensor? lam) -> Tensor");
  m.def(
      "plan(Tensor logits, Tensor target, Tensor(a!) loss_ma, Tensor(b!) rng_state, Tensor mentornet, Tensor step, "
      "Tensor? pool, Tensor? uniform, Tensor? beta, int total_steps, float percentile, float decay, "
      "int burn_in_epoch, float alpha) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("mix(Tensor x, Tensor partner, Tensor lam) -> Tensor");
  m.def(
      "mixed_loss(Tensor logits, Tensor target, Tensor partner, Tensor lam, Tensor? given_weights, "
      "Tensor(a!)? loss_ma_mixed, Tensor(b!)? num_steps, Tensor mentornet, Tensor step, Tensor? pool, "
      "int total_steps, float percentile, float decay, int burn_in_epoch, bool second_reweight) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "mixed_loss_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor partner, Tensor lam, "
      "Tensor lse, Tensor? weights) -> Tensor");
  m.def("cpu_isa() -> str", &cpu_isa);
}

TORCH_LIBRARY_IMPL(mentormix_cpp, CPU, m) {
  m.impl("ce", &mentormix::cpu::ce);
  m.impl("plan", &mentormix::cpu::plan);
  m.impl("mix", &mentormix::cpu::mix);
  m.impl("mixed_loss", &mentormix::cpu::mixed_loss);
  m.impl("mixed_loss_backward", &mentormix::cpu::mixed_loss_backward);
}
