"""Files in and out: mp4 reading and writing (`video`), a source portrait and a driving clip for animation
(`inputs`), pretrained weight files (`weights`) and the checkout's folders (`paths`)."""
