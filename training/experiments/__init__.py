"""Reproductions of the Batch Normalization paper's claims in miniature, on the bundled digits (or MNIST).

``bnfold-experiment`` (also ``python -m training.experiments``) runs each experiment end to end and writes a
Markdown report with tables and PNG figures: section 4.1 / Figure 1 (``fig1``), section 4.2 / Figure 2 and
Table 2 (``fig2``), and EMA vs Algorithm 2 population statistics across batch sizes (``popstats``).
"""
