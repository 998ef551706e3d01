"""Config sweeps in big_vision's convention: a recipe's ``get_hyper(h)`` expanded into
runs of ``python -m multimodal_ssl.main`` (``python -m multimodal_ssl.sweep``, README
"Sweeps").

- :mod:`~multimodal_ssl.sweep.hyper`: ``h.sweep / fixed / product / zipit / chainit``;
- :mod:`~multimodal_ssl.sweep.plan`: expansion, run names, validation of every run;
- :mod:`~multimodal_ssl.sweep.devices`: splitting devices between ``--parallel`` runs;
- :mod:`~multimodal_ssl.sweep.runner`: launching, skipping finished runs, resuming;
- :mod:`~multimodal_ssl.sweep.summary` / :mod:`~multimodal_ssl.sweep.plot` /
  :mod:`~multimodal_ssl.sweep.curves`: the tables and figures (final values against a
  swept key; metrics against the step), from the runs' own ``metrics.jsonl``;
- :mod:`~multimodal_ssl.sweep.aggregate`: seed mean ± std and clear-margin tests for
  experiment tables.
"""
