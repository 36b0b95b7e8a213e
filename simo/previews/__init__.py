"""Fast previews of weighted multi-task finetuning by Bayesian model merging (docs/papers.md).

Multi-task finetuning minimises ``Σ_t α_t ℓ_t(θ)``; trying many α costs a full run each. A preview
replaces each ``ℓ_t`` by the negative log density of a posterior ``q_t`` learnt on task t alone and
minimises ``Σ_t α_t (−log q_t(θ)) + ½ h0 ‖θ − θ0‖²`` instead, in seconds, so α can be scanned before
paying for real runs.

* :mod:`~simo.previews.posterior`: the posteriors (diagonal-Gaussian mixtures) and the preview
  (closed form, or EM for mixtures);
* :mod:`~simo.previews.judge`: how good a preview is against real runs (MAE, regret, fronts);
* :mod:`~simo.previews.grids`: the cached steps that build posteriors from per-task runs, preview
  a grid of α (a mixture read with each task's EM component's heads) and train the real weighted
  runs (AdamW, IVON and SGD: the last is where α visibly matters).
"""
from simo.previews.grids import (KINDS, SGD_LRS, TRUTHS, Kind, Previewer, components_of,
                                 posterior, preview_grid, previewer, previews_profile, runs,
                                 sensitivity, sgd_lr, sgd_lr_choice, sgd_run, uniform_alpha,
                                 weighted_run)
from simo.previews.judge import (compare, corners, hypervolume, hypervolume_gap, interior, mae,
                                 pareto_front, pick, regret, shape, task_points)
from simo.previews.posterior import (Posterior, check_alpha, gaussian, isotropic, load_posterior,
                                     mixture, objective, preview, prior_precision, save_posterior,
                                     simplex_grid)

__all__ = ["KINDS", "SGD_LRS", "TRUTHS", "Kind", "Previewer", "components_of", "posterior",
           "preview_grid", "previewer", "previews_profile", "runs", "sensitivity", "sgd_lr",
           "sgd_lr_choice", "sgd_run", "uniform_alpha", "weighted_run", "compare", "corners",
           "hypervolume", "hypervolume_gap", "interior", "mae", "pareto_front", "pick", "regret",
           "shape", "task_points", "Posterior", "check_alpha", "gaussian", "isotropic",
           "load_posterior", "mixture", "objective", "preview", "prior_precision",
           "save_posterior", "simplex_grid"]
