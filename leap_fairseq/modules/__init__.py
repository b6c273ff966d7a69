"""Attention modules, feature maps and the convolutional subsampler."""
