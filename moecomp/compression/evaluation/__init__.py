"""Evaluation of a compressed checkpoint against its original, loaded from disk as a user would."""
