// The production code the test module runs, compiled into it here rather than listed as sources of
// both extensions: setuptools builds every extension's objects in one directory, so a source shared
// by two extensions would be compiled twice into one object file, each build overwriting the
// other's.
#include "../cuda/persistent_plan.cpp"  // NOLINT(bugprone-suspicious-include)
#include "../layer/layer_args.cpp"      // NOLINT(bugprone-suspicious-include)
