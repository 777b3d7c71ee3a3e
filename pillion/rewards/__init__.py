"""Verifiable rewards: answer extraction, equivalence grading, shaping, code execution."""
