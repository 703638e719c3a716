def raise_high_level_ops(m): pass
