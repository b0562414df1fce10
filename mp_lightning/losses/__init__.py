"""Loss terms that are not networks (official forms, NOTES 3.1), and what training needs beyond them: FOMM's
equivariance, and statistics over the whole batch across processes. `adversarial` (LSGAN, feature matching),
`regions` (MetaPortrait's eye/mouth masked pyramid MSE), `identity` (the ID loss), `equivariance` (random TPS and
FOMM's keypoint equivariance), `batch_statistics` (batch-wide means and batch norm under DDP).

Functions return unweighted scalars unless a `weights` argument says otherwise; the stage multiplies by its
configured loss weights (official: eye 50, mouth 50, generator_gan 1, discriminator_gan 1, feature_matching
[10, 10, 10, 10], identity 20 in the paper / off in the released code). Perceptual losses hold a frozen VGG and
live with it in `networks/perceptual.py`.
"""
