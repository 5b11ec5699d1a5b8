"""Test stand-in for SGLang's python package (see tests/stacks/standins/standin.py)."""
