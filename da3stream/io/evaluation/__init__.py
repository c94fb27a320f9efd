"""Evaluation against ground truth (ATE/RPE) and the self-contained HTML report."""
