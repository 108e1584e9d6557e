"""The model path: model families, sources, tokenization, ONNX export, the parity gate,
publishing into the Triton model repository and the ``config.pbtxt`` it serves from."""
