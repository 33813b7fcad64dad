"""rnnkern.RNN and RNNCell as modules: the drop-in contract with torch.nn.RNN and nn.RNNCell."""
