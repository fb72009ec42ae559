"""Algorithm plugins. Each file holds one algorithm; `base.py` holds the contract and families."""
