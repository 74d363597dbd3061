"""facetriplet: content-based face image retrieval with triplet-loss embeddings and ScaNN search.

The library is importable without side effects: nothing is downloaded and TensorFlow is imported
only by the modules that need it.
"""

__version__ = "0.1.0"
