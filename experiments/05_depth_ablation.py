"""05 - Does encoder depth matter for regime classification?

Question: does stacking more Transformer encoder blocks (1, 2, 4, 6) improve forward-volatility regime
classification on daily market windows, once each depth is tuned with the same budget?

- Scientific hyperparameter (the arms): ``model.num_layers`` in {1, 2, 4, 6}.
- Nuisance hyperparameters: ``regimetry.studies.DEFAULT_NUISANCE``, tuned separately in every arm.
- Fixed: sinusoidal interleaved encoding, mean pooling, unmasked attention, pre-norm blocks (stable at
  depth 6); data and labels as in 03.
- Budget (equal per arm): 8 Sobol trials per arm on the first walk-forward fold, at most 15 epochs; best
  configuration of every arm confirmed on 5 folds x 3 seeds; pooled block-bootstrap intervals.

Reproduce: ``python experiments/05_depth_ablation.py`` (``--smoke`` for a quick run).
"""

import sys

from regimetry.studies import Ablation, Arm, main

ABLATION = Ablation(
    name="05_depth_ablation",
    question="Does encoder depth matter for regime classification?",
    scientific="model.num_layers",
    arms=tuple(Arm(f"depth_{n}", {"model.num_layers": n}) for n in (1, 2, 4, 6)),
    fixed={"model.pooling": "mean", "model.positional_encoding": "sinusoidal", "model.attention_mask": "none",
           "model.norm_first": True},
)

if __name__ == "__main__":
    sys.exit(main(ABLATION))
