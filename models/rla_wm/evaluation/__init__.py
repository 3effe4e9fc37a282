"""Evaluation: open-loop metrics, closed-loop reports and pictures."""
