"""Metric implementations (torchmetrics), one file per family: `pixel` (PSNR, SSIM, L1), `perceptual` (LPIPS,
ST-LPIPS), `identity` (similarity and AED on FaceNet, ArcFace or dlib embeddings), `keypoints` (AKD and its
mediapipe detector), `temporal` (warping error), `fid`; `base` holds the running mean they share. `suite` holds
`MetricSuite`, which runs the configured ones on a batch, and their registry. The offline pretrained ones
(ST-LPIPS, dlib) need the `metrics` extra, import their package only when a metric is built and say why when
they cannot (`*_unavailable_reason`). The Lightning callback that logs them is
`callbacks.evaluation.MetricsCallback`; stages and runs import the metrics from here."""
