"""Image-based profiling: mechanism-of-action (MoA) prediction from per-well CellProfiler
profiles (BBBC021). Pure NumPy/SciPy/matplotlib, no torch.

``profiles`` reads the wells, ``normalize`` turns them into per-plate robust z-scores and
treatment profiles, ``moa`` predicts each treatment's MoA by its nearest neighbour under the
NSC / NSCB / random protocols, ``figures`` draws the confusion matrix and an embedding.
"""
