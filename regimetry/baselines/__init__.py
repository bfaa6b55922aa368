"""Classical regime baselines, evaluated on the same splits, windows and metrics as the transformers.

Every baseline takes a :class:`regimetry.data.types.Splits` and returns class probabilities (or,
where a model gives none, hard predictions) for the validation and test windows, aligned with
``split.y``, so that the metrics of record (``regimetry.scoring.metrics_from_probs``) are computed
exactly as for the encoders. Everything that is fitted - thresholds, scalers, regression
coefficients, GARCH and HMM parameters, the HMM state -> regime map - is fitted on the training
period only; the validation period is used only to choose a hyperparameter from a small grid
(HAR-RV / logistic ``C``, gradient-boosting learning rate), and the test period is never looked at.

Bar-level baselines (persistence, HAR-RV, GARCH, HMM) compute their inputs from the raw bars
(``Splits.bars["log_return"]``) at each window's last bar (``split.positions``), using returns up to
and including that bar only. Window baselines (``logistic``, ``gradient_boosting``) use the same
preprocessed windows ``split.X`` as the encoders.

Layout: ``maths`` (realized volatility, HAR features, bucketing, the scaled HMM forward filter: pure
functions of arrays), ``models`` (each baseline's fit-and-predict and the ``BASELINES`` registry),
``runner`` (run one or several baselines, score them with the metrics of record). Every public name
is importable from ``regimetry.baselines``.

Registry (``BASELINES``):

=====================  ==========================================================================
``climatology``        training class frequencies (the no-skill reference)
``persistence``        trailing realized volatility over the label horizon, bucketed with the
                       training thresholds: "the current regime persists" (hard predictions)
``har_rv``             HAR-RV (Corsi, 2009): log realized vol over 1/5/22 bars into a multinomial
                       logistic regression, ``C`` chosen on validation
``garch``              GARCH(1,1) with Student-t innovations (``arch``), fitted on the training
                       period, filtered forward with fixed parameters, forecast of the forward
                       realized vol over the horizon, bucketed (hard predictions)
``hmm``                Gaussian HMM (``hmmlearn``) on daily returns fitted on the training period;
                       *forward-filtered* state probabilities (data up to t only), mapped to
                       regimes with a state x regime table estimated on the training period
``logistic``           multinomial logistic regression on flattened windows, ``C`` chosen on val
``gradient_boosting``  ``HistGradientBoostingClassifier`` on flattened windows, learning rate on val
``bayes_filter``       synthetic data only: the Hamilton filter with the true parameters - the
                       Bayes-optimal classifier of the true regime, i.e. the ceiling
=====================  ==========================================================================

References:
    Corsi, F. (2009). A simple approximate long-memory model of realized volatility. Journal of
    Financial Econometrics 7(2), 174-196.
    Bollerslev, T. (1986). Generalized autoregressive conditional heteroskedasticity. Journal of
    Econometrics 31(3), 307-327; Bollerslev (1987) for Student-t innovations.
    Hamilton, J. D. (1989). A new approach to the economic analysis of nonstationary time series and
    the business cycle. Econometrica 57(2), 357-384 (the filter).
    Rabiner, L. R. (1989). A tutorial on hidden Markov models. Proc. IEEE 77(2) (scaled forward pass).
"""

from regimetry.baselines.maths import (
    ANNUALIZATION,
    HAR_LAGS,
    bucket,
    forward_filter,
    gaussian_log_emissions,
    har_features,
    realized_vol,
)
from regimetry.baselines.models import BASELINES, C_GRID, GB_LEARNING_RATES, Baseline
from regimetry.baselines.runner import (
    BaselineResult,
    applicable_baselines,
    result_metrics,
    run_baseline,
    run_baselines,
)

__all__ = [
    "ANNUALIZATION",
    "BASELINES",
    "C_GRID",
    "GB_LEARNING_RATES",
    "HAR_LAGS",
    "Baseline",
    "BaselineResult",
    "applicable_baselines",
    "bucket",
    "forward_filter",
    "gaussian_log_emissions",
    "har_features",
    "realized_vol",
    "result_metrics",
    "run_baseline",
    "run_baselines",
]
