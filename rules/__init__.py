"""bdscan's rule engine and default rule pack: findings in, verdict out.

Never imports torch or loads a model, so a saved findings JSON can be judged anywhere.
"""
