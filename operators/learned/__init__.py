"""Learned operators (neural networks as plain ``nn.Module``s); small pretrained weights live in ``weights/``."""
