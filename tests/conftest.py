import os
import sys

# Tests import their helpers (reference_weights) and the package from the checkout.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
