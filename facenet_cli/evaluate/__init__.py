"""Verification on LFW: distances, ROC, reports, t-SNE maps and plots."""
