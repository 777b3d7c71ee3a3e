"""Data: dataset readers, the synthetic curriculum, mixtures, history resampling, templates."""

from pillion.data.problem import Problem

__all__ = ["Problem"]
