"""The pocket CLIP: a small CLIP pre-trained by this project on a generated, captioned world.

Real CLIP weights cannot be downloaded on the machines that build this book, and no
package ships them. So the project draws its own world of industrial-looking objects and
surfaces with captions (:mod:`vtfusion.pocket.world`, :mod:`vtfusion.pocket.captions`),
pre-trains a small open_clip ``CLIP`` on it with open_clip's ``ClipLoss``
(:mod:`vtfusion.pocket.pretrain`), and ships the fp16 weights as package data
(:mod:`vtfusion.pocket.release`). It plays the part CLIP plays in the paper: it has
seen "damaged" things, but never the toy benchmark's categories, its defect renderers or
DAS output. Its numbers are never the paper's.
"""
