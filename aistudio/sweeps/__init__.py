"""Sweep bookkeeping: sweep.json at the sweep root and the ranked summary at the end of a multirun."""
