"""CT perfusion analysis (S5): maps from a 4D series, lesions from the maps, a digital
phantom with known truth, and the pictures of a result.

Only numpy, scipy and matplotlib are imported at this level (torch by the accelerated
deconvolution when it runs); the series is read by :mod:`medinfer.io.perfusion`.
"""

from medinfer.perfusion.config import PerfusionConfig
from medinfer.perfusion.figures import curves_figure, maps_figure, summary_page
from medinfer.perfusion.lesions import Lesions, find_lesions, left_right
from medinfer.perfusion.maps import MAP_NAMES, PerfusionMaps, compute_maps, frame_times
from medinfer.perfusion.phantom import Phantom, PhantomConfig, PhantomTruth, make_phantom, write_phantom

__all__ = ["MAP_NAMES", "Lesions", "PerfusionConfig", "PerfusionMaps", "Phantom", "PhantomConfig",
           "PhantomTruth", "compute_maps", "curves_figure", "find_lesions", "frame_times", "left_right",
           "make_phantom", "maps_figure", "summary_page", "write_phantom"]
