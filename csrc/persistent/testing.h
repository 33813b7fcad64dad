// rnnkern._C's functions for testing the persistent kernels' plan and emulation
// (tests/test_launch_plan.py).
#pragma once

#include <pybind11/pybind11.h>

namespace rnnkern::persistent {
void add_testing_functions(pybind11::module_& module);
}
