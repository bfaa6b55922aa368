"""05 - Does encoder depth matter for regime classification?

Question: does stacking more Transformer encoder blocks (1, 2, 4, 6) improve forward-volatility regime
classification on daily market windows, once each depth is tuned with the same budget?

- Scientific hyperparameter (the arms): ``model.num_layers`` in {1, 2, 4, 6}.
- Nuisance hyperparameters: ``regimetry.studies.DEFAULT_NUISANCE``, tuned separately in every arm.
- Fixed: sinusoidal interleaved encoding, mean pooling, unmasked attention, pre-norm blocks (stable at
  depth 6); data and labels as in 03.
  Model (``regimetry.studies.RESIDUAL_MODEL``, issue 11): a linear shortcut on the last step's HAR lags
  (log_rv_1/5/22 and log_parkinson_1/5/22), warm-started to a logistic regression, plus the encoder on per-window centred
  inputs (it learns a residual and never sees a level); early stopping and trial choice on validation
  balanced accuracy; the best epoch is restored (``train.warm_start_candidate`` off: keeping the
  warm-started linear model unless an epoch beats it was measured and scored the same).
- Budget (equal per arm): 8 Sobol trials per arm on the tuning period (bars before 2008; the
  first walk-forward fold's train/validation blocks), at most 15 epochs; best
  configuration of every arm confirmed on 5 folds (test blocks 2008-01..2018-11) x 3 seeds; pooled block-bootstrap intervals.

Reproduce: ``python experiments/05_depth_ablation.py`` (``--smoke`` for a quick run).
"""

import sys

from regimetry.studies import RESIDUAL_MODEL, Ablation, Arm, main

ABLATION = Ablation(
    name="05_depth_ablation",
    question="Does encoder depth matter for regime classification?",
    scientific="model.num_layers",
    arms=tuple(Arm(f"depth_{n}", {"model.num_layers": n}) for n in (1, 2, 4, 6)),
    fixed={**RESIDUAL_MODEL, "model.pooling": "mean", "model.positional_encoding": "sinusoidal", "model.attention_mask": "none",
           "model.norm_first": True},
)

if __name__ == "__main__":
    sys.exit(main(ABLATION))
