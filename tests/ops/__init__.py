"""The raw torch.ops.rnnkern operators and the kernels behind them: opcheck, fuzzing, memory, threads."""
