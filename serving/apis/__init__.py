"""The wire protocol both ends speak: TensorProto, TF Serving's JSON tensors, and clients."""
