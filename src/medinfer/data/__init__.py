"""Datasets on disk layouts, preprocessing and augmentation.

Import the submodules directly (``medinfer.data.pairs``, ``medinfer.data.preprocess``);
this package imports nothing so that torch-free runtimes can read :mod:`medinfer.data.spec`.
"""
