"""Metric implementations that need optional packages (the `metrics` extra).

`st_lpips`: ST-LPIPS (stlpips-pytorch), `dlib_identity`: dlib's face-recognition ResNet. Each module
imports its package only when a metric is built and says why when it cannot be (`*_unavailable_reason`).
"""
