import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/hf_oracle.py
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
