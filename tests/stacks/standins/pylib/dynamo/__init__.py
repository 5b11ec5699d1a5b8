"""Test stand-in for NVIDIA Dynamo's python package (see tests/stacks/standins/standin.py)."""
