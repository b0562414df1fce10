"""Files in and out: mp4 reading and writing (`video`), pretrained weight files (`weights`) and the checkout's
folders (`paths`). A source portrait or driving clip for animation is read by `mp_lightning.preprocess.inputs`
(it runs the preprocessing pipeline when a file has no landmarks beside it)."""
