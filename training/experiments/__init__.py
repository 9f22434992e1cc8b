"""Reproductions of the Batch Normalization paper's claims in miniature, on the bundled digits (or MNIST).

``bnfold-experiment`` (also ``python -m training.experiments``) runs each experiment over several seeds and
writes ``experiments.json`` (every seed's numbers) and a Markdown report rendered from it: section 4.1 /
Figure 1 (``fig1``), section 4.2 / Figure 2 and Table 2 (``fig2``), and EMA vs Algorithm 2 population
statistics across batch sizes (``popstats``). Claims are judged across seeds by the rule in ``verdicts``.
"""
