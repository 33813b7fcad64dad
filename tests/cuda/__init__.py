"""The CUDA kernels: on a GPU, and their launch plan and recurrences checked on the CPU."""
