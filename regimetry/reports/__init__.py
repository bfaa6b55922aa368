"""Report notebooks: execute ``notebooks/*.ipynb`` with papermill into ``reports/`` (ipynb + HTML).

Reports read what experiments stored and never train (cookiecutter-data-science: notebooks
communicate, modules repeat). Three notebooks, each with a cell tagged ``parameters``:

- ``notebooks/ablation_report.ipynb``: one ablation (an MLflow parent run with ``stage=study``, its
  arm runs, trial runs and confirmation runs, and the arms' Optuna studies). Rendered by
  :func:`render_ablation_report`, which ``regimetry.studies.run_ablation`` calls at the end of a run.
- ``notebooks/data_report.ipynb``: one :class:`~regimetry.config.DataConfig` (source, features, leakage
  audit of a CSV's user columns, label distribution per split, regime timeline, label transition
  matrix). Rendered by :func:`render_data_report`.
- ``notebooks/controls_report.ipynb``: the checks table of ``experiments/00_positive_controls.py``.

The loading and table-building code lives in this package, so the notebooks stay short and the logic
is tested; one job per module:

- :mod:`~regimetry.reports.render`: papermill execution and HTML (``render_*``).
- :mod:`~regimetry.reports.runs`: an ablation read back from MLflow and its Optuna studies (every key
  named in :mod:`regimetry.records`; queries through ``regimetry.tracking`` and
  ``regimetry.studies.backend``, never mlflow or optuna directly, never the runner).
- :mod:`~regimetry.reports.figures`: the report's figures and :func:`show`.
- :mod:`~regimetry.reports.tables`: the data report's tables.
- :mod:`~regimetry.reports.cli`: the command line.

Command line::

    python -m regimetry.reports 03_encoding_ablation [--tracking-uri URI] [--storage URL]
        [--parent-run-id ID] [--metric balanced_accuracy] [--output-dir reports] [--no-log]
    python -m regimetry.reports --data-config configs/single_run.yaml [--output-dir reports]

Exit codes: 0 success; 1 the report failed (unknown experiment, no runs, a failing cell: the message
names the cell's error and the partially executed notebook is kept); 2 bad command-line usage.
"""

from regimetry.reports.cli import main
from regimetry.reports.figures import (controls_figure, fold_figure, histories_figure, importances_figure,
                                       matplotlib_colors, optimization_history_figure, regimes_over_time_figure,
                                       seed_strip_figure, show)
from regimetry.reports.render import (ABLATION_NOTEBOOK, DATA_NOTEBOOK, NOTEBOOK_DIR, REPORT_METRICS, ReportError,
                                      ReportPaths, data_config_from, experiment_data_report_or_error,
                                      render_ablation_report, render_controls_report, render_data_report,
                                      render_experiment_data_report, render_notebook)
from regimetry.reports.runs import (AblationRuns, _from_env, arm_summary, attention_images, best_model_run,
                                    confirmation_histories, differences, environment, fold_results, importances,
                                    load_ablation_runs, pooled_confusion, protocol, seed_results, trial_frames,
                                    tuning_warnings, verdict_lines)
from regimetry.reports.tables import label_distribution, leakage_audit_table, transition_matrix

__all__ = [
    "NOTEBOOK_DIR", "ABLATION_NOTEBOOK", "DATA_NOTEBOOK", "REPORT_METRICS", "ReportError", "ReportPaths",
    "AblationRuns", "render_notebook", "render_ablation_report", "render_data_report",
    "render_experiment_data_report", "experiment_data_report_or_error", "render_controls_report",
    "load_ablation_runs", "protocol", "arm_summary", "seed_results", "fold_results", "differences",
    "verdict_lines", "tuning_warnings", "trial_frames", "importances", "best_model_run", "attention_images",
    "pooled_confusion", "confirmation_histories", "environment", "seed_strip_figure",
    "optimization_history_figure", "importances_figure", "histories_figure", "fold_figure", "controls_figure",
    "regimes_over_time_figure", "matplotlib_colors", "label_distribution", "transition_matrix",
    "leakage_audit_table", "data_config_from", "show", "main", "_from_env",
]
