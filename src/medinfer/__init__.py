"""medinfer: fast, verified, hospital-ready inference for medical-imaging models.

Import the stage packages you need (``medinfer.io``, ``medinfer.models``, ...);
this top-level module imports nothing heavy.
"""

__version__ = "0.1.0"
