# The tests import the package from the build tree (ctest sets PYTHONPATH=build/python) or from an
# installed copy, and the PyTorch reference from this folder.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
