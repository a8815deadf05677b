"""Tables, figures and reports computed from result tables (and caches).

- :mod:`analysis.report`: ``write_report(results_dir)`` — every applicable figure, the tables and ``REPORT.md``.
- :mod:`analysis.compare`: best cells, fusion and combination gains, comparison tables across runs
  (``compare_runs(paths, out_dir)`` for a sweep or several results directories).
- :mod:`analysis.curves`: metric vs log-SNR / native timestep per layer; backbones on one log-SNR axis.
- :mod:`analysis.heatmaps`: layer × timestep maps, shared colour scale when backbones are compared.
- :mod:`analysis.fusion_plots`: learned per-pixel and global fusion weights.
- :mod:`analysis.complementarity`: single vs combined bars, per-class IoU gain, streaming linear CKA, error
  overlap.
- :mod:`analysis.concepts`: zero-shot concept maps (ConceptAttention) against their cross-attention baseline
  and the ridge ceiling at the same cell (labels: :mod:`analysis.concept_labels`); the maps per concept word and
  timestep (:mod:`analysis.concept_maps`).
- :mod:`analysis.cues`: fusion heads with concept-map cues vs the same heads without them.
- :mod:`analysis.predictions`: the best cells' predictions beside inputs and targets, keyed per target kind.
- :mod:`analysis.findings`: the answers to (a)–(d), one selection rule and one verdict vocabulary.
- :mod:`analysis.layout`: figure text that fits the canvas (wrapped titles, legends), and a check for clipping.
- :mod:`analysis.common`: row selection with helpful errors, seed means, the log-SNR axis, figure saving.
"""
