"""Indoor scenes in ScanNet's exported frame layout: a reader (scannet.py) and a synthetic generator (synthetic.py)."""
