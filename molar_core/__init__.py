"""molar_core: the library behind the molar pipeline (data, models, losses, index, metrics).

It knows nothing of DVC or of params.yaml: stages pass it plain values.
"""

__version__ = "0.1.0"
