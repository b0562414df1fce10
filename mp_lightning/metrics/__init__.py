"""Metric implementations (torchmetrics): `suite` holds LPIPS, identity similarity, AED, PSNR, SSIM, L1, AKD,
FID, temporal warping error and `MetricSuite`, which runs the configured ones on a batch; `st_lpips` (ST-LPIPS,
stlpips-pytorch) and `dlib_identity` (dlib's face-recognition ResNet) need the `metrics` extra, import their
package only when a metric is built and say why when they cannot (`*_unavailable_reason`). The Lightning callback
that logs them is `callbacks.evaluation.MetricsCallback`; stages and runs import the metrics from here."""
