"""robustness stage.

Keep this file free of imports: ``import mobilenets`` loads it (so that the public function
``mobilenets.robustness`` is never rebound to this package), and ``import mobilenets`` must stay cheap.
"""
