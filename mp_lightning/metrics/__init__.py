"""Metric implementations (torchmetrics): LPIPS, identity similarity, AED, PSNR, SSIM, L1, AKD, FID, temporal
warping error, and `MetricSuite` that runs the configured ones on a batch. The Lightning callback that logs
them is `callbacks.evaluation.MetricsCallback`; stages and runs import the metrics from here."""
