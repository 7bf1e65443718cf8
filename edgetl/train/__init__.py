"""Workstation side: fine-tuning. Options (``config``), the classifier and freezing (``model``),
pretrained weights (``weights``), checkpoints (``checkpoint``), which input pipeline a run uses
(``inputs``), the training loop (``loop``) and evaluation (``evaluate``). Imports ``edgetl.data.folders``
and below."""
